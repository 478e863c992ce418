//! [`RawTransport`]: framed messages over an AF_PACKET socket, as a ferry-driver [`Transport`].
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_driver::transport::{Capabilities, ConnectionId, Readiness, Transport, TransportKind};

use crate::frame::{self, Encoder, Event, Limits, Reassembler, Status, HEADER_LEN};
use crate::socket::{EthernetHeader, RawConfig, RawSocket, ETH_HLEN};

/// Loss and error counters of a [`RawTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages delivered.
    pub messages: u64,
    /// Gaps seen (each is one or more lost frames).
    pub gaps: u64,
    /// Frames known lost.
    pub lost_frames: u64,
    /// Stale (duplicate/reordered) frames dropped.
    pub stale_frames: u64,
    /// Frames dropped by the reassembler (orphans, mismatches, stream limit).
    pub dropped_frames: u64,
    /// Frames that failed to parse or were truncated.
    pub malformed_frames: u64,
    /// Frames from another source MAC, ignored.
    pub foreign_frames: u64,
}

/// One peer-to-peer link of framed messages over raw Ethernet.
///
/// Each side sends on its own stream id to one peer MAC; received frames from other MACs are
/// ignored. Messages larger than one frame are fragmented and reassembled; loss is detected
/// (see [`stats`](Self::stats)) but not repaired: this is a datagram transport.
#[derive(Debug)]
pub struct RawTransport {
    sock: RawSocket,
    peer: [u8; 6],
    id: ConnectionId,
    enc: Encoder,
    reasm: Reassembler,
    inbox: VecDeque<Bytes>,
    max_inbox: usize,
    stats: LinkStats,
    nonblocking: bool,
    read_timeout: Option<Duration>,
    closed: bool,
}

impl RawTransport {
    /// Open `ifname` and talk to `peer` (MAC), sending on `stream_id`.
    pub fn open(
        ifname: &str,
        peer: [u8; 6],
        stream_id: u32,
        cfg: RawConfig,
        limits: Limits,
    ) -> io::Result<RawTransport> {
        let sock = RawSocket::open(ifname, cfg)?;
        Ok(RawTransport::with_socket(sock, peer, stream_id, limits))
    }

    /// Wrap an open socket.
    pub fn with_socket(
        sock: RawSocket,
        peer: [u8; 6],
        stream_id: u32,
        limits: Limits,
    ) -> RawTransport {
        let payload = sock.max_frame_len() - ETH_HLEN - HEADER_LEN;
        let limits = Limits {
            max_frame_payload: limits.max_frame_payload.min(payload),
            ..limits
        };
        RawTransport {
            id: ConnectionId(stream_id as u64),
            enc: Encoder::new(stream_id, payload, &limits),
            reasm: Reassembler::new(limits),
            sock,
            peer,
            inbox: VecDeque::new(),
            max_inbox: 1024,
            stats: LinkStats::default(),
            nonblocking: false,
            read_timeout: None,
            closed: false,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &RawSocket {
        &self.sock
    }

    /// Mutable socket (kernel counters).
    pub fn socket_mut(&mut self) -> &mut RawSocket {
        &mut self.sock
    }

    /// Our MAC.
    pub fn local_mac(&self) -> [u8; 6] {
        self.sock.mac()
    }

    /// The peer's MAC.
    pub fn peer_mac(&self) -> [u8; 6] {
        self.peer
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Non-blocking mode: `recv` returns `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// Bound for a blocking `recv` (`None`: wait forever); expiry is `TimedOut`.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Send one message (fragmented as needed). Returns the frames sent.
    pub fn send_message(&mut self, msg: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let mut frags = self
            .enc
            .encode(msg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let n = frags.len();
        let eth = EthernetHeader {
            dst: self.peer,
            src: self.sock.mac(),
            ethertype: self.sock.ethertype(),
        };
        let sent = self.sock.send_with(n, |_, buf| {
            let Some(f) = frags.next() else { return 0 };
            if !eth.emit(buf) {
                return 0;
            }
            match f.emit(&mut buf[ETH_HLEN..]) {
                Ok(len) => ETH_HLEN + len,
                Err(_) => 0,
            }
        })?;
        Ok(sent)
    }

    /// Move frames from the ring through the reassembler, a block at a time, until the ring is
    /// empty or `max_inbox` messages wait (backpressure: the rest stays in the ring, and when
    /// the ring is full the kernel drops and counts). Returns frames seen.
    pub fn pump(&mut self) -> usize {
        let mut n = 0;
        while self.inbox.len() < self.max_inbox && self.sock.has_ready_block() {
            let peer = self.peer;
            let reasm = &mut self.reasm;
            let stats = &mut self.stats;
            n += self.sock.recv_with(1, |f| {
                if f.eth.src != peer {
                    stats.foreign_frames += 1;
                    return;
                }
                // One frame per Ethernet frame; what follows it is padding.
                match frame::parse_frame(f.payload, reasm.limits()) {
                    Ok(Status::Complete((fr, _))) if !f.truncated => reasm.handle_frame(&fr),
                    _ => stats.malformed_frames += 1,
                }
            });
            while let Some(ev) = self.reasm.poll_event() {
                match ev {
                    Event::Message { data, .. } => {
                        self.stats.messages += 1;
                        self.inbox.push_back(data);
                    }
                    Event::Gap {
                        expected, received, ..
                    } => {
                        self.stats.gaps += 1;
                        self.stats.lost_frames += received.wrapping_sub(expected) as u64;
                    }
                    Event::Stale { .. } => self.stats.stale_frames += 1,
                    _ => self.stats.dropped_frames += 1,
                }
            }
        }
        n
    }

    /// Most messages queued before [`pump`](Self::pump) stops reading the ring (default
    /// 1024; a block's worth more may be queued).
    pub fn set_max_inbox(&mut self, n: usize) {
        self.max_inbox = n.max(1);
    }

    /// Next whole message, waiting up to `timeout` (`None`: forever).
    pub fn recv_message(&mut self, timeout: Option<Duration>) -> io::Result<Option<Bytes>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            if self.closed {
                return Ok(None);
            }
            self.pump();
            if !self.inbox.is_empty() {
                continue;
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
                None => None,
            };
            self.sock.wait_readable(wait)?;
        }
    }

    /// Length of the next queued message, if one is queued.
    pub fn peek_len(&self) -> Option<usize> {
        self.inbox.front().map(Bytes::len)
    }
}

impl Transport for RawTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Datagram
    }

    /// Gathered sends only (copied into ring slots): no zero-copy, no offloads.
    fn capabilities(&self) -> Capabilities {
        Capabilities::VECTORED
    }

    fn connection_id(&self) -> ConnectionId {
        self.id
    }

    /// AF_PACKET endpoints have MAC addresses, not socket addresses: see
    /// [`RawTransport::local_mac`].
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "raw Ethernet endpoint: use local_mac()",
        ))
    }

    /// See [`RawTransport::peer_mac`].
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "raw Ethernet endpoint: use peer_mac()",
        ))
    }

    /// Largest message that fits one frame.
    fn mtu(&self) -> Option<usize> {
        Some(self.enc.max_payload())
    }

    /// Sends `buf` as one message; returns `buf.len()`.
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_message(buf)?;
        Ok(buf.len())
    }

    /// Sends the concatenation as one message.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let msg: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.send(&msg)
    }

    /// Receives one whole message. A buffer shorter than the message is an `InvalidInput`
    /// error and the message stays queued ([`RawTransport::peek_len`] tells its size).
    /// `Ok(0)` only after [`close`](Transport::close) (an empty message also reads as 0).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = if self.nonblocking {
            Some(Duration::ZERO)
        } else {
            self.read_timeout
        };
        if self.inbox.is_empty() {
            if self.closed {
                return Ok(0);
            }
            match self.recv_message(timeout)? {
                Some(m) => self.inbox.push_front(m),
                None if self.closed => return Ok(0),
                None if self.nonblocking => return Err(io::ErrorKind::WouldBlock.into()),
                None => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
        let len = self.inbox.front().map_or(0, Bytes::len);
        if len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {len} bytes does not fit a {}-byte buffer",
                    buf.len()
                ),
            ));
        }
        let m = self.inbox.pop_front().unwrap_or_default();
        buf[..len].copy_from_slice(&m);
        Ok(len)
    }

    /// Scatters one message over `bufs`.
    fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut tmp = vec![0u8; total];
        let n = self.recv(&mut tmp)?;
        let mut off = 0;
        for b in bufs.iter_mut() {
            if off >= n {
                break;
            }
            let k = b.len().min(n - off);
            b[..k].copy_from_slice(&tmp[off..off + k]);
            off += k;
        }
        Ok(n)
    }

    fn close(&mut self) -> io::Result<()> {
        self.closed = true;
        Ok(())
    }

    fn poll(&mut self, interest: Readiness, timeout: Option<Duration>) -> io::Result<Readiness> {
        let writable = interest.writable && !self.closed;
        if !interest.readable {
            return Ok(Readiness {
                readable: false,
                writable,
            });
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.inbox.is_empty() {
                self.pump();
            }
            let readable = !self.inbox.is_empty() || self.closed;
            if readable || writable {
                return Ok(Readiness { readable, writable });
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(Readiness::default());
                    }
                    Some(d - now)
                }
                None => None,
            };
            self.sock.wait_readable(wait)?;
        }
    }
}
