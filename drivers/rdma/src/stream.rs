//! [`RdmaStream`]: the byte-stream contract (and a message API) over any [`Verbs`] backend,
//! with credit-based flow control.
//!
//! Polling order, as for every Ferry driver: call [`RdmaStream::progress`] (reap completions,
//! post what credits allow) whenever the backend may have work, then read with
//! [`read`](RdmaStream::read) or [`recv_message`](RdmaStream::recv_message) (pick one per
//! stream: `read` ignores message boundaries) and write with [`write`](RdmaStream::write) or
//! [`send_message`](RdmaStream::send_message). Reading returns receive buffers to the ring
//! (and credits to the peer); nothing moves without `progress`.
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_driver::transport::{Capabilities, ConnectionId, Readiness, Transport, TransportKind};

use crate::credit::{CreditError, Credits, SendClass};
use crate::handshake::Endpoint;
use crate::segment::{Header, Kind, MessageAssembler, SegmentError, FLAG_END, HEADER_LEN};
use crate::verbs::{Completion, SlotRing, Verbs};

/// Stream settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Most bytes queued for sending before `write` refuses more. Default 1 MiB.
    pub max_queued: usize,
    /// Largest message `recv_message` reassembles. Default 16 MiB.
    pub max_message: usize,
}

impl Default for StreamConfig {
    fn default() -> StreamConfig {
        StreamConfig {
            max_queued: 1 << 20,
            max_message: 16 << 20,
        }
    }
}

/// A fatal stream error; after one, every call returns it again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The backend failed (text of the [`VerbsError`](crate::verbs::VerbsError)).
    Verbs(String),
    /// The peer sent a malformed message.
    Segment(SegmentError),
    /// Credit accounting was violated.
    Credit(CreditError),
    /// A work request completed with an error status.
    WorkFailed {
        /// Work request id.
        wr_id: u64,
        /// Status.
        status: u32,
    },
    /// A message over [`StreamConfig::max_message`] arrived.
    MessageTooLarge(usize),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Verbs(e) => write!(f, "verbs: {e}"),
            StreamError::Segment(e) => write!(f, "peer message: {e}"),
            StreamError::Credit(e) => write!(f, "credits: {e}"),
            StreamError::WorkFailed { wr_id, status } => {
                write!(f, "work request {wr_id} failed with status {status}")
            }
            StreamError::MessageTooLarge(n) => write!(f, "message of {n} bytes over the limit"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        io::Error::other(e)
    }
}

#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    off: usize,
    /// Whether the last segment carries END (a message) or not (stream bytes).
    message: bool,
}

#[derive(Clone, Copy, Debug)]
struct Ready {
    slot: usize,
    pos: usize,
    end_pos: usize,
    end: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// DATA messages sent.
    pub data_sent: u64,
    /// Credit updates sent.
    pub updates_sent: u64,
    /// DATA messages received.
    pub data_received: u64,
    /// Times a send waited for credits.
    pub credit_stalls: u64,
}

/// A reliable byte stream over an RC queue pair (or the fake backend).
#[derive(Debug)]
pub struct RdmaStream<V: Verbs> {
    verbs: V,
    id: ConnectionId,
    cfg: StreamConfig,
    peer_slots: u32,
    max_payload: usize,
    credits: Credits,
    send_ring: SlotRing,
    out: VecDeque<Outgoing>,
    queued: usize,
    ready: VecDeque<Ready>,
    assembler: MessageAssembler,
    completions: Vec<Completion>,
    close_queued: bool,
    close_sent: bool,
    peer_closed: bool,
    error: Option<StreamError>,
    stats: StreamStats,
    nonblocking: bool,
    timeout: Option<Duration>,
}

impl<V: Verbs> RdmaStream<V> {
    /// Start a stream on a connected backend, given the peer's handshake data. Posts every
    /// receive buffer.
    pub fn new(
        mut verbs: V,
        peer: &Endpoint,
        id: ConnectionId,
        cfg: StreamConfig,
    ) -> Result<RdmaStream<V>, StreamError> {
        for slot in 0..verbs.recv_slots() {
            verbs
                .post_recv(slot)
                .map_err(|e| StreamError::Verbs(e.to_string()))?;
        }
        let max_payload = (peer.slot_size as usize).min(verbs.slot_size()) - HEADER_LEN;
        Ok(RdmaStream {
            credits: Credits::new(peer.recv_slots as u32, verbs.recv_slots() as u32),
            send_ring: SlotRing::new(verbs.send_slots()),
            peer_slots: peer.recv_slots as u32,
            max_payload,
            verbs,
            id,
            cfg,
            out: VecDeque::new(),
            queued: 0,
            ready: VecDeque::new(),
            assembler: MessageAssembler::new(cfg.max_message),
            completions: Vec::new(),
            close_queued: false,
            close_sent: false,
            peer_closed: false,
            error: None,
            stats: StreamStats::default(),
            nonblocking: false,
            timeout: None,
        })
    }

    /// The backend.
    pub fn verbs(&self) -> &V {
        &self.verbs
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Credits in hand.
    pub fn credits(&self) -> u32 {
        self.credits.available()
    }

    /// Bytes queued and not yet posted.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the peer closed its side (reads end once its data is drained).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether everything queued (and a requested close) has been posted.
    pub fn flushed(&self) -> bool {
        self.out.is_empty() && (!self.close_queued || self.close_sent)
    }

    fn fail(&mut self, e: StreamError) -> StreamError {
        self.error.get_or_insert(e).clone()
    }

    fn check(&self) -> Result<(), StreamError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Reap completions and post what credits and send slots allow. Never blocks.
    pub fn progress(&mut self) -> Result<(), StreamError> {
        self.check()?;
        let mut comps = std::mem::take(&mut self.completions);
        comps.clear();
        let r = self.verbs.poll(&mut comps);
        if let Err(e) = r {
            self.completions = comps;
            return Err(self.fail(StreamError::Verbs(e.to_string())));
        }
        let mut result = Ok(());
        for c in comps.drain(..) {
            if let Err(e) = self.on_completion(c) {
                result = Err(self.fail(e));
                break;
            }
        }
        self.completions = comps;
        result?;
        self.flush()
    }

    fn on_completion(&mut self, c: Completion) -> Result<(), StreamError> {
        match c {
            Completion::Send { slot } => {
                self.send_ring.release(slot);
            }
            Completion::Recv { slot, len } => {
                let parsed = self.verbs.with_recv_buf(slot, |b| {
                    b.get(..len)
                        .ok_or(SegmentError::BadLength)
                        .and_then(|m| Header::parse(m).map(|(h, _)| h))
                });
                let h = parsed.map_err(StreamError::Segment)?;
                self.credits
                    .on_grant(h.credits, self.peer_slots)
                    .map_err(StreamError::Credit)?;
                match h.kind {
                    Kind::Data => {
                        self.stats.data_received += 1;
                        self.ready.push_back(Ready {
                            slot,
                            pos: HEADER_LEN,
                            end_pos: HEADER_LEN + h.len as usize,
                            end: h.flags & FLAG_END != 0,
                        });
                    }
                    Kind::Close => {
                        self.peer_closed = true;
                        self.repost(slot)?;
                    }
                    _ => self.repost(slot)?,
                }
            }
            Completion::Failed { wr_id, status } => {
                return Err(StreamError::WorkFailed { wr_id, status });
            }
        }
        Ok(())
    }

    fn repost(&mut self, slot: usize) -> Result<(), StreamError> {
        self.verbs
            .post_recv(slot)
            .map_err(|e| StreamError::Verbs(e.to_string()))?;
        self.credits.on_reposted();
        Ok(())
    }

    fn post(&mut self, kind: Kind, flags: u8, payload: &[u8]) -> Result<bool, StreamError> {
        let class = if kind == Kind::Credit {
            SendClass::Control
        } else {
            SendClass::Data
        };
        if !self.credits.can_send(class) {
            return Ok(false);
        }
        let Some(slot) = self.send_ring.acquire() else {
            return Ok(false);
        };
        let credits = self.credits.on_send(class).map_err(StreamError::Credit)?;
        let h = Header {
            kind,
            flags,
            credits,
            len: payload.len() as u32,
        };
        let len = HEADER_LEN + payload.len();
        self.verbs.with_send_buf(slot, |b| {
            h.emit(b);
            b[HEADER_LEN..len].copy_from_slice(payload);
        });
        if let Err(e) = self.verbs.post_send(slot, len) {
            return Err(StreamError::Verbs(e.to_string()));
        }
        match kind {
            Kind::Credit => self.stats.updates_sent += 1,
            Kind::Data => self.stats.data_sent += 1,
            _ => {}
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        loop {
            if let Some(o) = self.out.front() {
                let size = (o.data.len() - o.off).min(self.max_payload);
                let end = o.message && o.off + size == o.data.len();
                let flags = if end { FLAG_END } else { 0 };
                // Borrow dance: copy the segment range out of `self.out` through indices.
                let (off, data) = (o.off, std::mem::take(&mut self.out[0].data));
                let posted = self.post(Kind::Data, flags, &data[off..off + size]);
                self.out[0].data = data;
                match posted {
                    Ok(true) => {
                        self.queued -= size;
                        let o = &mut self.out[0];
                        o.off += size;
                        if o.off == o.data.len() {
                            self.out.pop_front();
                        }
                        continue;
                    }
                    Ok(false) => self.stats.credit_stalls += 1,
                    Err(e) => return Err(self.fail(e)),
                }
            } else if self.close_queued && !self.close_sent {
                match self.post(Kind::Close, 0, &[]) {
                    Ok(true) => {
                        self.close_sent = true;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.credits.update_due() {
                match self.post(Kind::Credit, 0, &[]) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return Err(self.fail(e)),
                }
            }
            return Ok(());
        }
    }

    /// Queue stream bytes; returns how many were accepted (0 when the queue is full: call
    /// `progress` and retry). Posts what credits allow.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        self.check()?;
        if self.close_queued {
            return Err(StreamError::Verbs("write after close".into()));
        }
        let n = data
            .len()
            .min(self.cfg.max_queued.saturating_sub(self.queued));
        if n > 0 {
            self.out.push_back(Outgoing {
                data: data[..n].to_vec(),
                off: 0,
                message: false,
            });
            self.queued += n;
        }
        self.flush()?;
        Ok(n)
    }

    /// Queue one whole message (all or nothing). `Ok(false)` when it does not fit the queue now.
    pub fn send_message(&mut self, msg: &[u8]) -> Result<bool, StreamError> {
        self.check()?;
        if self.close_queued {
            return Err(StreamError::Verbs("send after close".into()));
        }
        if self.queued + msg.len() > self.cfg.max_queued.max(msg.len()) && self.queued > 0 {
            return Ok(false);
        }
        self.out.push_back(Outgoing {
            data: msg.to_vec(),
            off: 0,
            message: true,
        });
        self.queued += msg.len();
        self.flush()?;
        Ok(true)
    }

    /// Copy received stream bytes into `buf`; `Ok(0)` means end of stream (peer closed and
    /// drained) or, with an empty `buf`, nothing. `WouldBlock` when nothing is ready.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        let mut n = 0;
        while n < buf.len() {
            let Some(r) = self.ready.front_mut() else {
                break;
            };
            let k = (r.end_pos - r.pos).min(buf.len() - n);
            let (slot, pos) = (r.slot, r.pos);
            self.verbs
                .with_recv_buf(slot, |b| buf[n..n + k].copy_from_slice(&b[pos..pos + k]));
            n += k;
            let r = self.ready.front_mut().expect("front exists");
            r.pos += k;
            if r.pos == r.end_pos {
                self.ready.pop_front();
                self.repost(slot)?;
            }
        }
        if n > 0 || buf.is_empty() {
            self.flush()?;
            return Ok(n);
        }
        if self.peer_closed {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Next whole message, if all its segments arrived.
    pub fn recv_message(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        self.check()?;
        let mut out = None;
        while let Some(r) = self.ready.pop_front() {
            let res = self
                .verbs
                .with_recv_buf(r.slot, |b| self.assembler.push(&b[r.pos..r.end_pos], r.end));
            self.repost(r.slot).map_err(|e| self.fail(e))?;
            match res {
                Ok(Some(m)) => {
                    out = Some(m);
                    break;
                }
                Ok(None) => {}
                Err(len) => return Err(self.fail(StreamError::MessageTooLarge(len))),
            }
        }
        self.flush()?;
        Ok(out)
    }

    /// Close our sending side once queued data is posted.
    pub fn close(&mut self) -> Result<(), StreamError> {
        self.check()?;
        self.close_queued = true;
        self.flush()
    }

    fn readable(&self) -> bool {
        !self.ready.is_empty() || self.peer_closed || self.error.is_some()
    }

    fn wait(
        &mut self,
        mut done: impl FnMut(&Self) -> bool,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        // Completion queues are polled, not waited on (no completion channel here): spin with
        // yields, bounded by the timeout.
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.progress()?;
            if done(self) {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// Non-blocking mode for the [`Transport`] methods.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// Timeout for blocking [`Transport`] calls (`None`: forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }
}

impl<V: Verbs> Transport for RdmaStream<V> {
    fn kind(&self) -> TransportKind {
        TransportKind::Stream
    }

    /// Gathered writes only: bytes are copied into registered buffers.
    fn capabilities(&self) -> Capabilities {
        Capabilities::VECTORED
    }

    fn connection_id(&self) -> ConnectionId {
        self.id
    }

    /// RDMA endpoints are GIDs/QP numbers, not socket addresses.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "RDMA endpoint: see the handshake Endpoint",
        ))
    }

    /// See [`local_addr`](Transport::local_addr).
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }

    fn mtu(&self) -> Option<usize> {
        None
    }

    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.write(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        if self.nonblocking {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let limit = self.cfg.max_queued;
        if !self.wait(|s| s.queued < limit, self.timeout)? {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(self.write(buf)?)
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.send(&joined)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.progress()?;
        match self.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.nonblocking => {
                if !self.wait(Self::readable, self.timeout)? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.read(buf)
            }
            r => r,
        }
    }

    fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match bufs.iter_mut().find(|b| !b.is_empty()) {
            Some(b) => self.recv(b),
            None => Ok(0),
        }
    }

    fn close(&mut self) -> io::Result<()> {
        RdmaStream::close(self)?;
        Ok(())
    }

    fn poll(&mut self, interest: Readiness, timeout: Option<Duration>) -> io::Result<Readiness> {
        let limit = self.cfg.max_queued;
        let ready = |s: &Self| Readiness {
            readable: interest.readable && s.readable(),
            writable: interest.writable && s.queued < limit && !s.close_queued,
        };
        self.wait(|s| ready(s) != Readiness::default(), timeout)?;
        Ok(ready(self))
    }
}

/// Drive two streams until neither makes progress (test helper for in-memory backends).
pub fn drive_pair<A: Verbs, B: Verbs>(
    a: &mut RdmaStream<A>,
    b: &mut RdmaStream<B>,
    rounds: usize,
) -> Result<(), StreamError> {
    for _ in 0..rounds {
        a.progress()?;
        b.progress()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verbs::FakeVerbs;
    use proptest::prelude::*;

    fn ep(slots: u16, size: u32) -> Endpoint {
        Endpoint {
            qp_num: 1,
            lid: 0,
            gid: None,
            psn: 0,
            recv_slots: slots,
            slot_size: size,
        }
    }

    fn pair(
        size: usize,
        slots: usize,
        cfg: StreamConfig,
    ) -> (RdmaStream<FakeVerbs>, RdmaStream<FakeVerbs>) {
        let (va, vb) = FakeVerbs::pair(size, slots, slots);
        let e = ep(slots as u16, size as u32);
        let a = RdmaStream::new(va, &e, ConnectionId(1), cfg).unwrap();
        let b = RdmaStream::new(vb, &e, ConnectionId(2), cfg).unwrap();
        (a, b)
    }

    #[test]
    fn stream_round_trip_and_close() {
        let (mut a, mut b) = pair(64, 4, StreamConfig::default());
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(a.write(&data).unwrap(), data.len());
        a.close().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        for _ in 0..100_000 {
            drive_pair(&mut a, &mut b, 1).unwrap();
            match b.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(got, data);
        assert!(a.flushed());
        assert!(b.peer_closed());
        assert!(
            a.stats().credit_stalls > 0,
            "4 buffers of 56 bytes must stall"
        );
    }

    #[test]
    fn slow_reader_stops_writer() {
        let (mut a, mut b) = pair(64, 8, StreamConfig::default());
        a.write(&[7u8; 5000]).unwrap();
        drive_pair(&mut a, &mut b, 50).unwrap();
        // Nobody reads b: a stops at one reserved credit, having filled b's 7 other buffers.
        assert_eq!(a.credits(), 1);
        assert_eq!(b.stats().data_received, 7);
        assert!(a.queued() > 0);
        let mut buf = [0u8; 5000];
        let mut n = 0;
        for _ in 0..10_000 {
            drive_pair(&mut a, &mut b, 1).unwrap();
            match b.read(&mut buf[n..]) {
                Ok(k) => n += k,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            if n == 5000 {
                break;
            }
        }
        assert_eq!(n, 5000);
        assert!(buf.iter().all(|&x| x == 7));
    }

    #[test]
    fn messages_and_limits() {
        let cfg = StreamConfig {
            max_message: 300,
            ..StreamConfig::default()
        };
        let (mut a, mut b) = pair(64, 4, cfg);
        assert!(a.send_message(b"").unwrap());
        assert!(a.send_message(&[1u8; 250]).unwrap());
        assert!(a.send_message(&[2u8; 301]).unwrap());
        let mut got = Vec::new();
        let mut err = None;
        for _ in 0..1000 {
            drive_pair(&mut a, &mut b, 1).unwrap_or(());
            match b.recv_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(got, vec![Vec::new(), vec![1u8; 250]]);
        assert_eq!(err, Some(StreamError::MessageTooLarge(301)));
        // Sticky.
        assert_eq!(b.progress(), Err(StreamError::MessageTooLarge(301)));
    }

    #[test]
    fn transport_trait_and_disconnect() {
        let (mut a, mut b) = pair(128, 4, StreamConfig::default());
        assert_eq!(a.kind(), TransportKind::Stream);
        assert_eq!(
            a.local_addr().unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        b.set_timeout(Some(Duration::from_secs(5)));
        let t: &mut dyn Transport = &mut a;
        assert_eq!(
            t.send_vectored(&[IoSlice::new(b"he"), IoSlice::new(b"llo")])
                .unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let n = Transport::recv(&mut b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        b.set_nonblocking(true);
        assert_eq!(
            Transport::recv(&mut b, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let r = Transport::poll(
            &mut b,
            Readiness {
                readable: true,
                writable: true,
            },
            Some(Duration::ZERO),
        )
        .unwrap();
        assert!(r.writable && !r.readable);
        a.verbs().disconnect();
        assert!(matches!(b.progress(), Err(StreamError::Verbs(_))));
        assert!(b.write(b"x").is_err());
    }

    #[test]
    fn garbage_from_peer_is_fatal() {
        let (mut va, vb) = FakeVerbs::pair(64, 4, 4);
        let e = ep(4, 64);
        let mut b = RdmaStream::new(vb, &e, ConnectionId(2), StreamConfig::default()).unwrap();
        va.with_send_buf(0, |s| s[..8].copy_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]));
        va.post_send(0, 8).unwrap();
        assert_eq!(
            b.progress(),
            Err(StreamError::Segment(SegmentError::BadKind(9)))
        );
        // Over-granting credits is a protocol violation too.
        let (mut va, vb) = FakeVerbs::pair(64, 4, 4);
        let mut b = RdmaStream::new(vb, &e, ConnectionId(2), StreamConfig::default()).unwrap();
        va.with_send_buf(0, |s| s[..8].copy_from_slice(&[2, 0, 0, 1, 0, 0, 0, 0]));
        va.post_send(0, 8).unwrap();
        assert!(matches!(
            b.progress(),
            Err(StreamError::Credit(CreditError::Overgrant { .. }))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Both sides write and read random chunks concurrently with small rings: everything
        /// arrives in order, the fake never reports RNR (no overrun), and nothing deadlocks.
        #[test]
        fn bidirectional_random_workload(
            slots in 4usize..9,
            size in 9usize..80,
            a_data in proptest::collection::vec(any::<u8>(), 0..3000),
            b_data in proptest::collection::vec(any::<u8>(), 0..3000),
            read_sizes in proptest::collection::vec(1usize..200, 1..20),
            max_queued in 1usize..2000,
        ) {
            let cfg = StreamConfig { max_queued, ..StreamConfig::default() };
            let (mut a, mut b) = pair(size, slots, cfg);
            let (mut a_off, mut b_off) = (0, 0);
            let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
            let mut buf = vec![0u8; 256];
            let mut i = 0;
            for _ in 0..200_000 {
                i += 1;
                if a_off < a_data.len() {
                    a_off += a.write(&a_data[a_off..]).unwrap();
                }
                if a_off == a_data.len() {
                    a.close().unwrap();
                }
                if b_off < b_data.len() {
                    b_off += b.write(&b_data[b_off..]).unwrap();
                }
                if b_off == b_data.len() {
                    b.close().unwrap();
                }
                drive_pair(&mut a, &mut b, 1).unwrap();
                let rs = read_sizes[i % read_sizes.len()];
                let (mut a_eof, mut b_eof) = (false, false);
                match a.read(&mut buf[..rs]) { Ok(0) => a_eof = true, Ok(n) => a_got.extend_from_slice(&buf[..n]), Err(_) => {} }
                match b.read(&mut buf[..rs]) { Ok(0) => b_eof = true, Ok(n) => b_got.extend_from_slice(&buf[..n]), Err(_) => {} }
                if a_eof && b_eof { break; }
            }
            prop_assert_eq!(&b_got, &a_data);
            prop_assert_eq!(&a_got, &b_data);
        }
    }
}
