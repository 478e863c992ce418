//! The transport abstraction: what every driver's connection can do, whatever carries it.
//!
//! A [`Transport`] is one connection (or socket) of some [`TransportKind`]. Kernel sockets,
//! io_uring-owned sockets and userspace TCP over AF_XDP/DPDK all present this face, so tools
//! and tests can treat them alike. The event loops in `ferry-epoll` / `ferry-uring` do not go
//! through this trait on their hot path (they batch and own buffers); it is the blocking,
//! one-connection view, with [`StdTransport`] as the reference implementation.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;

/// How a transport frames data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// A reliable, ordered byte stream (TCP, Unix stream).
    Stream,
    /// Unreliable messages (UDP, raw frames).
    Datagram,
    /// Reliable, ordered messages with boundaries (SCTP, Unix seqpacket, RDMA RC).
    SeqPacket,
}

/// Capability flags of a transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability.
    pub const NONE: Capabilities = Capabilities(0);
    /// Can send from caller memory without copying (`MSG_ZEROCOPY`, `SEND_ZC`, UMEM, mbufs).
    pub const ZERO_COPY: Capabilities = Capabilities(1);
    /// Gathers/scatters several buffers per call.
    pub const VECTORED: Capabilities = Capabilities(2);
    /// TLS record processing in the kernel or NIC (kTLS).
    pub const TLS_OFFLOAD: Capabilities = Capabilities(4);
    /// Checksums computed by the NIC or not needed (loopback).
    pub const CHECKSUM_OFFLOAD: Capabilities = Capabilities(8);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets.
    pub const fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// Flag names, for `ferry probe`.
    pub fn names(self) -> Vec<&'static str> {
        let all = [
            (Self::ZERO_COPY, "zero-copy"),
            (Self::VECTORED, "vectored"),
            (Self::TLS_OFFLOAD, "tls-offload"),
            (Self::CHECKSUM_OFFLOAD, "checksum-offload"),
        ];
        all.iter()
            .filter(|(c, _)| self.contains(*c) && c.0 != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        self.union(rhs)
    }
}

/// Readiness a [`Transport::poll`] waits for or reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Data (or EOF) can be received.
    pub readable: bool,
    /// Data can be sent.
    pub writable: bool,
}

/// Identifies a connection inside one driver (slab token plus generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// One connection of some transport, blocking or non-blocking as configured.
pub trait Transport {
    /// Framing kind.
    fn kind(&self) -> TransportKind;
    /// Capability flags.
    fn capabilities(&self) -> Capabilities;
    /// This connection's id.
    fn connection_id(&self) -> ConnectionId;
    /// Local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Peer address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// Largest payload per send that avoids fragmentation, when known.
    fn mtu(&self) -> Option<usize>;
    /// Send bytes; returns how many were accepted.
    fn send(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Gathered send.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Send an owned buffer, zero-copy where the transport can (the default copies).
    fn send_zero_copy(&mut self, buf: Bytes) -> io::Result<usize> {
        self.send(&buf)
    }
    /// Receive bytes; `Ok(0)` is end of stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Scattered receive.
    fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    /// Close both directions.
    fn close(&mut self) -> io::Result<()>;
    /// Wait up to `timeout` (forever with `None`) until one of `interest` is ready.
    fn poll(&mut self, interest: Readiness, timeout: Option<Duration>) -> io::Result<Readiness>;
}

/// [`Transport`] over a `std::net::TcpStream` (the "std sockets" driver of the design).
#[derive(Debug)]
pub struct StdTransport {
    stream: TcpStream,
    id: ConnectionId,
}

impl StdTransport {
    /// Wrap a connected stream.
    pub fn new(stream: TcpStream, id: ConnectionId) -> StdTransport {
        StdTransport { stream, id }
    }

    /// The stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Transport for StdTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Stream
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::VECTORED
    }
    fn connection_id(&self) -> ConnectionId {
        self.id
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }
    fn mtu(&self) -> Option<usize> {
        None
    }
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
    fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.stream.read_vectored(bufs)
    }
    fn close(&mut self) -> io::Result<()> {
        match self.stream.shutdown(Shutdown::Both) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }
    fn poll(&mut self, interest: Readiness, timeout: Option<Duration>) -> io::Result<Readiness> {
        let mut events = 0;
        if interest.readable {
            events |= libc::POLLIN;
        }
        if interest.writable {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `pfd` is one valid pollfd for a descriptor we own, and we pass count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = pfd.revents;
        Ok(Readiness {
            readable: r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
            writable: r & (libc::POLLOUT | libc::POLLERR) != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_transport_round_trip() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut a = StdTransport::new(c, ConnectionId(1));
        let mut b = StdTransport::new(s, ConnectionId(2));
        assert_eq!(a.kind(), TransportKind::Stream);
        assert!(a.capabilities().contains(Capabilities::VECTORED));
        assert!(!a.capabilities().contains(Capabilities::ZERO_COPY));
        let n = a
            .send_vectored(&[IoSlice::new(b"he"), IoSlice::new(b"llo")])
            .unwrap();
        assert_eq!(n, 5);
        let r = b
            .poll(
                Readiness {
                    readable: true,
                    writable: false,
                },
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert!(r.readable);
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        a.close().unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), 0);
        assert_eq!(
            Capabilities::ZERO_COPY
                .union(Capabilities::VECTORED)
                .names(),
            vec!["zero-copy", "vectored"]
        );
    }
}
