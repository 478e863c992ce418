//! Listener sockets: one `SO_REUSEPORT` listener per I/O worker, bound up front so a port in
//! use is reported before any thread starts, and port 0 resolves to one real port for all.
//! Unix-domain listeners (`unix:/path`) have no `SO_REUSEPORT`: the workers share one socket
//! (each gets a duplicate descriptor) and the kernel hands each connection to one of them.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to listen: an IP address and port, or a Unix-domain socket path (`unix:/path`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// TCP over IPv4 or IPv6.
    Inet(SocketAddr),
    /// A Unix-domain stream socket at this path.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Inet).map_err(|_| {
            format!("invalid address `{s}` (expected IP:PORT, [IPv6]:PORT or unix:PATH)")
        })
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> ListenAddr {
        ListenAddr::Inet(a)
    }
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain stream.
    Unix(UnixListener),
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

impl From<Listener> for OwnedFd {
    fn from(l: Listener) -> OwnedFd {
        match l {
            Listener::Tcp(l) => l.into(),
            Listener::Unix(l) => l.into(),
        }
    }
}

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};

/// Socket options for listeners and the connections they accept.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// `listen(2)` backlog. Default 4096.
    pub backlog: i32,
    /// `TCP_NODELAY` on accepted connections. Default `true`.
    pub nodelay: bool,
    /// `SO_RCVBUF` for accepted connections (inherited from the listener), if set.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` for accepted connections (inherited from the listener), if set.
    pub send_buffer: Option<usize>,
    /// `IPV6_V6ONLY` for IPv6 listeners. Default `false` (dual-stack).
    pub v6_only: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: 4096,
            nodelay: true,
            recv_buffer: None,
            send_buffer: None,
            v6_only: false,
        }
    }
}

/// Binding failed: which address, and why.
#[derive(Debug)]
pub struct BindError {
    /// The address.
    pub addr: ListenAddr,
    /// The OS error.
    pub source: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.source.kind() == io::ErrorKind::AddrInUse {
            write!(f, "address {} is already in use", self.addr)
        } else {
            write!(f, "cannot listen on {}: {}", self.addr, self.source)
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn bind_one(addr: SocketAddr, opts: &ListenOptions) -> io::Result<TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(opts.v6_only)?;
    }
    if let Some(n) = opts.recv_buffer {
        s.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer {
        s.set_send_buffer_size(n)?;
    }
    s.bind(&addr.into())?;
    s.listen(opts.backlog)?;
    Ok(s.into())
}

/// Whether anyone listens on `addr` already, even another process's `SO_REUSEPORT` group
/// (say a second `ferry serve` on the same port), which `SO_REUSEPORT` alone would let us
/// join, silently taking half its connections. A probe socket without `SO_REUSEPORT` binds
/// only where nobody listens (`SO_REUSEADDR` still passes `TIME_WAIT` leftovers); it is closed
/// at once.
fn probe_free(addr: SocketAddr, opts: &ListenOptions) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(opts.v6_only)?;
    }
    s.bind(&addr.into())
}

/// Bind `n` non-blocking listeners on `addr` with `SO_REUSEPORT`: the first picks the port
/// (port 0 = any free port), the others bind the same one. An address someone already
/// listens on is refused (`AddrInUse`), also when that someone uses `SO_REUSEPORT`.
pub fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    opts: &ListenOptions,
) -> Result<Vec<TcpListener>, BindError> {
    let err = |source| BindError {
        addr: addr.into(),
        source,
    };
    probe_free(addr, opts).map_err(err)?;
    let first = bind_one(addr, opts).map_err(err)?;
    let real = first.local_addr().map_err(err)?;
    let mut v = vec![first];
    for _ in 1..n.max(1) {
        v.push(bind_one(real, opts).map_err(|source| BindError {
            addr: real.into(),
            source,
        })?);
    }
    Ok(v)
}

/// Bind `n` listeners on `addr` (see [`bind_listeners`]; a Unix socket is bound once and
/// duplicated). A stale Unix socket file (nobody accepting) is replaced; a live one is
/// "already in use". Returns the listeners and the real address (port 0 resolved).
pub fn bind(
    addr: &ListenAddr,
    n: usize,
    opts: &ListenOptions,
) -> Result<(Vec<Listener>, ListenAddr), BindError> {
    match addr {
        ListenAddr::Inet(a) => {
            let ls = bind_listeners(*a, n, opts)?;
            let real = ls[0].local_addr().map_err(|source| BindError {
                addr: addr.clone(),
                source,
            })?;
            Ok((
                ls.into_iter().map(Listener::Tcp).collect(),
                ListenAddr::Inet(real),
            ))
        }
        ListenAddr::Unix(path) => {
            let err = |source| BindError {
                addr: addr.clone(),
                source,
            };
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(io::Error::from(io::ErrorKind::AddrInUse)));
            }
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            let l = UnixListener::bind(path).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            let mut v = Vec::with_capacity(n.max(1));
            for _ in 1..n.max(1) {
                v.push(Listener::Unix(l.try_clone().map_err(err)?));
            }
            v.insert(0, Listener::Unix(l));
            Ok((v, addr.clone()))
        }
    }
}

/// Apply per-connection options to an accepted socket.
pub fn configure_accepted(fd: RawFd, opts: &ListenOptions) {
    if opts.nodelay {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer with the size we pass.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Read once from `fd` into the spare capacity of `buf` (reserving `chunk` bytes first when
/// less than a quarter of that is spare), without zero-filling. Returns the byte count (0 = EOF).
pub fn read_into(fd: &impl AsRawFd, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
    recv_into(fd, buf, chunk).map(|(n, _)| n)
}

/// [`read_into`], also returning how many bytes were asked for: a read shorter than that
/// drained the socket at that instant, which lets an edge-triggered loop skip the extra
/// `recv` that would only say `EAGAIN` (as nginx does) — unless the peer's FIN is pending.
pub fn recv_into(
    fd: &impl AsRawFd,
    buf: &mut BytesMut,
    chunk: usize,
) -> io::Result<(usize, usize)> {
    // Reserve only when little room is left: small requests then share one allocation
    // instead of a `reserve` call (and often a fresh buffer) per read.
    if buf.capacity() - buf.len() < (chunk / 4).max(1) {
        buf.reserve(chunk);
    }
    let spare = buf.spare_capacity_mut();
    let asked = spare.len();
    // The raw system call, not libc's `recv`: that one is a cancellation point and brackets
    // every call with pthread asynchronous-cancel bookkeeping we never use.
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; recvfrom writes
    // at most that many bytes and reports how many it wrote; no address is asked for.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd.as_raw_fd(),
            spare.as_mut_ptr(),
            asked,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised exactly `n` bytes after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, asked))
}

/// Whether the peer has sent bytes we have not read (a `MSG_PEEK` of one byte). Used before a
/// close: with nothing unread, closing cannot turn into a reset that destroys our last
/// response, so no lingering is needed.
pub fn has_unread_input(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: peeks at most one byte into a valid local; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_listeners_share_one_port() {
        let ls =
            bind_listeners("127.0.0.1:0".parse().unwrap(), 3, &ListenOptions::default()).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn port_in_use_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_listeners(addr, 1, &ListenOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), format!("address {addr} is already in use"));
    }

    #[test]
    fn a_second_reuseport_group_on_a_taken_port_is_refused() {
        let opts = ListenOptions::default();
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2, &opts).unwrap();
        let addr = first[0].local_addr().unwrap();
        let e = bind_listeners(addr, 2, &opts).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(e.to_string(), format!("address {addr} is already in use"));
        // Once the first group is gone the port is free again.
        drop(first);
        assert_eq!(bind_listeners(addr, 2, &opts).unwrap().len(), 2);
    }

    #[test]
    fn listen_addrs_parse_and_print() {
        let a: ListenAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(a, ListenAddr::Inet("127.0.0.1:80".parse().unwrap()));
        let u: ListenAddr = "unix:/tmp/x.sock".parse().unwrap();
        assert_eq!(u.to_string(), "unix:/tmp/x.sock");
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("nope".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn unix_listeners_are_shared_and_stale_files_replaced() {
        let path = std::env::temp_dir().join(format!("ferry-listen-{}.sock", std::process::id()));
        let addr = ListenAddr::Unix(path.clone());
        let (ls, real) = bind(&addr, 2, &ListenOptions::default()).unwrap();
        assert_eq!((ls.len(), &real), (2, &addr));
        // A live socket is in use.
        let e = bind(&addr, 1, &ListenOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("address unix:{} is already in use", path.display())
        );
        drop(ls);
        // The file left behind is stale now: it is replaced.
        let (ls, _) = bind(&addr, 1, &ListenOptions::default()).unwrap();
        drop(ls);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn ipv6_listener() {
        if let Ok(ls) = bind_listeners("[::1]:0".parse().unwrap(), 1, &ListenOptions::default()) {
            assert!(ls[0].local_addr().unwrap().is_ipv6());
        }
    }

    #[test]
    fn read_into_appends() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(b"abc").unwrap();
        let mut b = BytesMut::from(&b"x"[..]);
        assert_eq!(read_into(&s, &mut b, 64).unwrap(), 3);
        assert_eq!(&b[..], b"xabc");
    }
}
