//! The relay on a Ferry driver: one [`RelayConn`] session per socket, `Down` for the accepted
//! client connection and `Up` for the outbound connection it opens with
//! [`WorkerCtx::connect`]. Both halves live on the same I/O worker and talk through
//! [`WorkerCtx::post`]. The `Down` half owns both [`Pipe`]s (all fault logic in one place);
//! `Up` only moves bytes.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_driver::{
    ConnInfo, Launch, ListenAddr, OutQueue, Request, Response, ServerHandle, ServerOptions,
    Service, Session, WorkerCtx,
};
use ferry_proto::Instant;

use crate::fault::{Dir, Faults, Pipe, PipeFaults, Release, ResetFault, Stall};

/// Bytes in flight per direction (read, not yet written on the other side) above which the
/// reading side stops reading (TCP backpressure reaches the sender).
const HIGH_WATER: usize = 256 * 1024;
/// How long an upstream connect may take before the pair is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a stalled-forever connection looks at the fault configuration again.
const RECHECK: Duration = Duration::from_millis(20);

/// Why a relay could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum RelayError {
    /// Binding the listen address failed.
    Bind(String),
    /// Starting the driver failed.
    Start(io::Error),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Bind(e) => write!(f, "cannot bind: {e}"),
            RelayError::Start(e) => write!(f, "cannot start the driver: {e}"),
        }
    }
}

impl std::error::Error for RelayError {}

/// Counters of one relay (monotonic except `active`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections closed right after accept (`refuse`).
    pub refused: u64,
    /// Connections reset.
    pub resets: u64,
    /// Upstream connects that failed or timed out.
    pub connect_failures: u64,
    /// Client connections open now.
    pub active: u64,
    /// Bytes forwarded to upstreams.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded to clients.
    pub bytes_to_downstream: u64,
    /// Bytes dropped by half-open faults.
    pub bytes_dropped: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted={} refused={} resets={} connect_failures={} active={} \
             bytes_to_upstream={} bytes_to_downstream={} bytes_dropped={}",
            self.accepted,
            self.refused,
            self.resets,
            self.connect_failures,
            self.active,
            self.bytes_to_upstream,
            self.bytes_to_downstream,
            self.bytes_dropped
        )
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    connect_failures: AtomicU64,
    active: AtomicU64,
    to_up: AtomicU64,
    to_down: AtomicU64,
    dropped: AtomicU64,
}

/// State shared by a relay's sessions and its handle.
pub struct RelayShared {
    listen_port: u16,
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    version: AtomicU64,
    conns: AtomicU64,
    /// Client halves waiting for their upstream half, by connection number.
    pending: Mutex<HashMap<u64, Pending>>,
    counters: Counters,
}

impl RelayShared {
    fn lock_faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client half waiting for its upstream half: token, generation, flow.
type Pending = (usize, u32, Arc<Flow>);

/// Flow control between the two halves of one relayed connection.
#[derive(Default)]
struct Flow {
    /// Bytes read by `Down`, not yet written by `Up` (or dropped).
    c2s: AtomicUsize,
    /// Bytes read by `Up`, not yet written by `Down` (or dropped).
    s2c: AtomicUsize,
    down_blocked: AtomicBool,
    up_blocked: AtomicBool,
    down_closed: AtomicBool,
}

fn sub(a: &AtomicUsize, n: usize) -> usize {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        let new = cur.saturating_sub(n);
        match a.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return new,
            Err(c) => cur = c,
        }
    }
}

/// Mail between the halves of a relayed connection.
#[derive(Debug)]
pub struct Mail {
    to_gen: u32,
    kind: MailKind,
}

#[derive(Debug)]
enum MailKind {
    /// `Up` connected: its token and generation.
    Hello {
        token: usize,
        gen: u32,
    },
    Data(Bytes),
    Eof,
    Close,
    /// Room again: read on.
    Resume,
}

#[derive(Debug, PartialEq, Eq)]
enum Side {
    Down,
    Up,
}

/// One socket of a relayed connection (see the module docs).
pub struct RelayConn {
    side: Side,
    shared: Arc<RelayShared>,
    flow: Arc<Flow>,
    token: usize,
    gen: u32,
    peer_addr: Option<SocketAddr>,
    /// The other half: token and generation, once known.
    peer: Option<(usize, u32)>,
    input: BytesMut,
    out: OutQueue,
    faults: Faults,
    version: u64,
    /// `Down` only: client → upstream and upstream → client schedules.
    c2s: Pipe,
    s2c: Pipe,
    reset: Option<ResetFault>,
    saw_eof: bool,
    eof_forwarded: bool,
    s2c_eof_pushed: bool,
    /// No more input will come for our socket's output: finish once it is flushed.
    drain_then_finish: bool,
    peer_closed: bool,
    rst_pending: bool,
    finished: bool,
    connected: bool,
    connect_deadline: Option<Instant>,
    last_now: Instant,
    close_sent: bool,
    releases: Vec<Release>,
}

impl RelayConn {
    fn new(
        side: Side,
        shared: Arc<RelayShared>,
        flow: Arc<Flow>,
        gen: u32,
        n: u64,
        now: Instant,
    ) -> Self {
        let (faults, version) = {
            let f = shared.lock_faults();
            (f.clone(), shared.version.load(Ordering::Acquire))
        };
        let seed = faults.seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
        RelayConn {
            side,
            shared,
            flow,
            token: 0,
            gen,
            peer_addr: None,
            peer: None,
            input: BytesMut::new(),
            out: OutQueue::default(),
            faults,
            version,
            c2s: Pipe::new(seed),
            s2c: Pipe::new(seed ^ 0x5555_5555_5555_5555),
            reset: None,
            saw_eof: false,
            eof_forwarded: false,
            s2c_eof_pushed: false,
            drain_then_finish: false,
            peer_closed: false,
            rst_pending: false,
            finished: false,
            connected: false,
            connect_deadline: None,
            last_now: now,
            close_sent: false,
            releases: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.version {
            self.faults = self.shared.lock_faults().clone();
            self.version = v;
        }
    }

    fn pipe_faults(&self, dir: Dir, now: Instant) -> PipeFaults {
        let f = &self.faults;
        PipeFaults {
            latency: f.latency,
            jitter: f.jitter,
            bandwidth: f.bandwidth,
            stalled_until: match f.stall {
                Stall::None => None,
                Stall::Forever => Some(Instant::FAR_FUTURE),
                Stall::Until(t) => t
                    .checked_duration_since(std::time::Instant::now())
                    .map(|d| now + d),
            },
            drop_all: f.half_open == Some(dir),
            reset_after: self.reset.filter(|r| r.dir == dir).map(|r| r.after_bytes),
        }
    }

    fn post(&self, ctx: &WorkerCtx, kind: MailKind) {
        if let Some((t, g)) = self.peer {
            let _ = ctx.post(t, Mail { to_gen: g, kind });
        }
    }

    /// Down: push what the client sent into the client → upstream pipe.
    fn take_input(&mut self, now: Instant) {
        if self.input.is_empty() {
            return;
        }
        let data = self.input.split().freeze();
        let pf = self.pipe_faults(Dir::ToUpstream, now);
        let before = self.c2s.dropped();
        self.c2s.push(now, &pf, data);
        let dropped = (self.c2s.dropped() - before) as usize;
        if dropped > 0 {
            sub(&self.flow.c2s, dropped);
            self.shared
                .counters
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Down: release what is due in both directions.
    fn pump(&mut self, ctx: &WorkerCtx, now: Instant) {
        self.last_now = now;
        if self.side != Side::Down || self.finished {
            return;
        }
        self.refresh();
        // Client → upstream: only once the upstream half is connected.
        if self.peer.is_some() && !self.peer_closed {
            let pf = self.pipe_faults(Dir::ToUpstream, now);
            let mut rel = std::mem::take(&mut self.releases);
            self.c2s.pop_due(now, &pf, &mut rel);
            for r in rel.drain(..) {
                match r {
                    Release::Data(b) => {
                        self.shared
                            .counters
                            .to_up
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        self.post(ctx, MailKind::Data(b));
                    }
                    Release::Eof => {
                        self.eof_forwarded = true;
                        self.post(ctx, MailKind::Eof);
                    }
                    Release::Reset => self.rst_pending = true,
                }
            }
            self.releases = rel;
        }
        if self.saw_eof && (self.peer_closed || self.faults.half_open == Some(Dir::ToUpstream)) {
            // The client is gone and so is the upstream (or the upstream can never learn it
            // under a half-open fault): close both.
            self.drain_then_finish = true;
        }
        // Upstream → client.
        let pf = self.pipe_faults(Dir::ToDownstream, now);
        let mut rel = std::mem::take(&mut self.releases);
        self.s2c.pop_due(now, &pf, &mut rel);
        for r in rel.drain(..) {
            match r {
                Release::Data(b) => {
                    self.shared
                        .counters
                        .to_down
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    self.out.push(b);
                }
                Release::Eof => self.drain_then_finish = true,
                Release::Reset => self.rst_pending = true,
            }
        }
        self.releases = rel;
        self.maybe_finish(ctx);
    }

    fn maybe_finish(&mut self, ctx: &WorkerCtx) {
        if self.finished || !self.out.is_empty() {
            return;
        }
        if self.rst_pending {
            self.do_reset(ctx);
        } else if self.drain_then_finish {
            self.finished = true;
        }
    }

    /// RST the client connection now (`connect(AF_UNSPEC)` on the socket, which aborts it
    /// like `close` with `SO_LINGER {1, 0}`), and close the upstream half.
    fn do_reset(&mut self, ctx: &WorkerCtx) {
        self.finished = true;
        self.saw_eof = true; // closed at once, no lingering
        self.c2s.clear();
        self.s2c.clear();
        if let Some(peer) = self.peer_addr {
            if abort_socket(self.shared.listen_port, peer) {
                self.shared.counters.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.send_close(ctx);
    }

    fn send_close(&mut self, ctx: &WorkerCtx) {
        if !self.close_sent {
            self.close_sent = true;
            self.post(ctx, MailKind::Close);
        }
    }

    fn resume_peer(&self, ctx: &WorkerCtx, left: usize) {
        let flag = match self.side {
            Side::Down => &self.flow.up_blocked,
            Side::Up => &self.flow.down_blocked,
        };
        if left < HIGH_WATER / 2 && flag.swap(false, Ordering::AcqRel) {
            self.post(ctx, MailKind::Resume);
        }
    }

    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        let left = match self.side {
            Side::Down => sub(&self.flow.s2c, n),
            Side::Up => sub(&self.flow.c2s, n),
        };
        self.resume_peer(ctx, left);
        if self.out.is_empty() {
            self.maybe_finish(ctx);
        }
    }
}

/// Abort the TCP socket of this process whose local port is `local_port` and whose peer is
/// `peer`: an RST goes out at once (`connect` with `AF_UNSPEC` disconnects a TCP socket, the
/// same abort `close` does under `SO_LINGER {1, 0}`, while the driver keeps owning the fd).
/// Returns whether such a socket was found. Only sockets of the calling thread's network
/// namespace match (relays in different namespaces of one process may share ports).
pub fn abort_socket(local_port: u16, peer: SocketAddr) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let here = own_netns_cookie();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if sock_addr(fd, false).is_some_and(|a| a.port() == local_port)
            && sock_addr(fd, true) == Some(peer)
            && (here.is_none() || netns_cookie(fd) == here)
        {
            // SAFETY: a zeroed sockaddr with family AF_UNSPEC, passed with its size; the fd is
            // a TCP socket owned by this thread's driver (we matched its addresses).
            let rc = unsafe {
                let mut sa: libc::sockaddr = std::mem::zeroed();
                sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
                libc::connect(
                    fd,
                    &sa,
                    std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
                )
            };
            return rc == 0;
        }
    }
    false
}

/// The network namespace cookie of socket `fd` (`SO_NETNS_COOKIE`, Linux 5.14+).
fn netns_cookie(fd: i32) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// The calling thread's network namespace cookie, from a throwaway socket.
fn own_netns_cookie() -> Option<u64> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let c = netns_cookie(fd);
    // SAFETY: we own `fd`.
    unsafe { libc::close(fd) };
    c
}

fn sock_addr(fd: i32, peer: bool) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data, zero is a valid value; the kernel writes at most
    // `len` bytes into it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: `p` points to `len` writable bytes.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { *(p as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { *(p as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

impl Session for RelayConn {
    type Shared = RelayShared;
    type Mail = Mail;

    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<RelayShared>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let c = &shared.counters;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        let n = shared.conns.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow::default());
        let mut s = RelayConn::new(Side::Down, shared.clone(), flow.clone(), gen, n, now);
        if s.faults.refuse {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        c.active.fetch_add(1, Ordering::Relaxed);
        s.peer_addr = info.peer;
        s.reset = s.faults.resets_connection(n);
        if s.reset.is_some_and(|r| r.after_bytes == 0) {
            s.rst_pending = true;
            return Some(s);
        }
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n, (info.token, gen, flow));
        if !ctx.connect(shared.upstream, n) {
            shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&n);
            s.drain_then_finish = true;
        }
        Some(s)
    }

    fn open_outbound(
        _ctx: &mut WorkerCtx,
        shared: &Arc<RelayShared>,
        info: ConnInfo,
        tag: u64,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let (down, down_gen, flow) = shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag)?;
        let mut s = RelayConn::new(Side::Up, shared.clone(), flow, gen, tag, now);
        s.token = info.token;
        s.peer = Some((down, down_gen));
        s.connect_deadline = Some(now + CONNECT_TIMEOUT);
        Some(s)
    }

    fn on_connected(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.connected = true;
        self.connect_deadline = None;
        self.last_now = now;
        if self.flow.down_closed.load(Ordering::Acquire) {
            self.finished = true;
            return;
        }
        self.post(
            ctx,
            MailKind::Hello {
                token: self.token,
                gen: self.gen,
            },
        );
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, _error: io::Error, _now: Instant) {
        self.shared
            .counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.finished = true;
        self.send_close(ctx);
    }

    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    fn wants_read(&self, _ctx: &WorkerCtx) -> bool {
        if self.finished || self.saw_eof || self.rst_pending {
            return false;
        }
        let (inflight, flag) = match self.side {
            Side::Down => (&self.flow.c2s, &self.flow.down_blocked),
            Side::Up => {
                if !self.connected {
                    return false;
                }
                (&self.flow.s2c, &self.flow.up_blocked)
            }
        };
        if inflight.load(Ordering::Relaxed) >= HIGH_WATER {
            flag.store(true, Ordering::Release);
            return false;
        }
        true
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn saw_eof(&self) -> bool {
        self.saw_eof
    }

    fn has_pending(&self) -> bool {
        false
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        if self.rst_pending && self.out.is_empty() {
            return Some(self.last_now);
        }
        let mut next = self.connect_deadline;
        if self.side == Side::Down {
            let now = self.last_now;
            for (pipe, dir) in [(&self.c2s, Dir::ToUpstream), (&self.s2c, Dir::ToDownstream)] {
                if pipe.is_empty() {
                    continue;
                }
                let pf = self.pipe_faults(dir, now);
                let d = pipe.next_deadline(&pf).unwrap_or(now + RECHECK);
                // A stall may be lifted at any time: look again at least this often.
                let d = if pf.stalled_until.is_some() {
                    d.min(now + RECHECK)
                } else {
                    d
                };
                next = Some(next.map_or(d, |n: Instant| n.min(d)));
            }
        }
        next
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.fill_iov(iov)
    }

    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        self.out.written(n);
        self.on_written(ctx, n);
    }

    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.out.take_out(max, into)
    }

    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        self.out.sent(n, chunks);
        self.on_written(ctx, n);
    }

    fn on_read(&mut self, _ctx: &WorkerCtx, n: usize) {
        let f = match self.side {
            Side::Down => &self.flow.c2s,
            Side::Up => &self.flow.s2c,
        };
        f.fetch_add(n, Ordering::Relaxed);
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.saw_eof = true;
        match self.side {
            Side::Down => {
                self.take_input(now);
                let pf = self.pipe_faults(Dir::ToUpstream, now);
                self.c2s.push_eof(now, &pf);
                if self.peer.is_none() && !self.rst_pending {
                    // No upstream yet (or never): nothing to wait for.
                    self.drain_then_finish = self.peer_closed || self.faults.half_open.is_none();
                }
                self.pump(ctx, now);
            }
            Side::Up => {
                if !self.input.is_empty() {
                    let data = self.input.split().freeze();
                    self.post(ctx, MailKind::Data(data));
                }
                self.post(ctx, MailKind::Eof);
                self.finished = true;
            }
        }
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.last_now = now;
        if self.connect_deadline.is_some_and(|d| now >= d) {
            self.shared
                .counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            self.finished = true;
            self.send_close(ctx);
            return;
        }
        self.pump(ctx, now);
        self.maybe_finish(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.finished = true;
        self.send_close(ctx);
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.last_now = now;
        match self.side {
            Side::Down => {
                self.take_input(now);
                self.pump(ctx, now);
            }
            Side::Up => {
                if self.connected && !self.input.is_empty() && !self.finished && !self.close_sent {
                    let data = self.input.split().freeze();
                    self.post(ctx, MailKind::Data(data));
                }
            }
        }
    }

    fn retry_pending(&mut self, _ctx: &mut WorkerCtx, _now: Instant) -> bool {
        true
    }

    fn take_mail(_ctx: &mut WorkerCtx, _shared: &RelayShared, _into: &mut Vec<(usize, Mail)>) {}

    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        if mail.to_gen != self.gen {
            // For an earlier connection with this token.
            Self::drop_mail(ctx, &self.shared, mail);
            return;
        }
        self.last_now = now;
        match (mail.kind, &self.side) {
            (MailKind::Hello { token, gen }, Side::Down) => {
                self.peer = Some((token, gen));
                if self.finished || self.close_sent {
                    // We gave up before the upstream half existed (a `Close` posted then went
                    // nowhere): tell it now.
                    self.close_sent = false;
                    self.send_close(ctx);
                }
                self.pump(ctx, now);
            }
            (MailKind::Data(b), Side::Down) => {
                self.refresh();
                let pf = self.pipe_faults(Dir::ToDownstream, now);
                let before = self.s2c.dropped();
                let len = b.len();
                self.s2c.push(now, &pf, b);
                let dropped = (self.s2c.dropped() - before) as usize;
                if dropped > 0 || self.finished {
                    let left = sub(&self.flow.s2c, if self.finished { len } else { dropped });
                    self.shared
                        .counters
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    self.resume_peer(ctx, left);
                }
                self.pump(ctx, now);
            }
            (MailKind::Eof | MailKind::Close, Side::Down) => {
                self.peer_closed = true;
                if !self.s2c_eof_pushed {
                    self.s2c_eof_pushed = true;
                    self.refresh();
                    let pf = self.pipe_faults(Dir::ToDownstream, now);
                    self.s2c.push_eof(now, &pf);
                }
                self.pump(ctx, now);
            }
            (MailKind::Data(b), Side::Up) => {
                if !self.finished {
                    self.out.push(b);
                }
            }
            (kind @ (MailKind::Eof | MailKind::Close), Side::Up) => {
                self.peer_closed = true;
                if matches!(kind, MailKind::Close) {
                    self.close_sent = true; // the client half is gone: nothing to tell it
                }
                self.drain_then_finish = true;
                if self.out.is_empty() {
                    self.finished = true;
                }
            }
            (MailKind::Resume, _) => {}
            (MailKind::Hello { .. }, Side::Up) => {}
        }
    }

    fn drop_mail(ctx: &mut WorkerCtx, _shared: &RelayShared, mail: Mail) {
        // An upstream half introduced itself to a client half that is gone: close it.
        if let MailKind::Hello { token, gen } = mail.kind {
            let _ = ctx.post(
                token,
                Mail {
                    to_gen: gen,
                    kind: MailKind::Close,
                },
            );
        }
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        match self.side {
            Side::Down => {
                self.flow.down_closed.store(true, Ordering::Release);
                self.shared.counters.active.fetch_sub(1, Ordering::Relaxed);
            }
            Side::Up => {}
        }
        self.send_close(ctx);
    }
}

struct NoService;
impl Service for NoService {
    fn call(&self, _req: Request) -> Response {
        Response::text(500, "not an HTTP server\n")
    }
}

/// A running relay on the epoll driver (one I/O worker thread); stopped when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<RelayShared>,
    handle: Option<ServerHandle>,
}

impl Relay {
    /// Listen on `listen` (port 0 picks one) and relay every connection to `upstream`, with
    /// `faults` applied.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        faults: Faults,
    ) -> Result<Relay, RelayError> {
        let opts = ServerOptions {
            workers: 1,
            pin: false,
            drain_timeout: Duration::from_millis(200),
            linger: Duration::from_millis(500),
            ..ServerOptions::default()
        };
        let launch = Launch::prepare(ListenAddr::Inet(listen), opts, Arc::new(NoService))
            .map_err(|e| RelayError::Bind(e.to_string()))?;
        let addr = match &launch.local_addr {
            ListenAddr::Inet(a) => *a,
            other => return Err(RelayError::Bind(format!("unexpected address {other}"))),
        };
        let shared = Arc::new(RelayShared {
            listen_port: addr.port(),
            upstream,
            faults: Mutex::new(faults),
            version: AtomicU64::new(0),
            conns: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let handle = ferry_epoll::start_with::<RelayConn>(launch, shared.clone())
            .map_err(RelayError::Start)?;
        Ok(Relay {
            addr,
            shared,
            handle: Some(handle),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.lock_faults().clone()
    }

    /// Replace the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.update(|f| *f = faults);
    }

    /// Change the faults in place.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        let mut f = self.shared.lock_faults();
        change(&mut f);
        self.shared.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Stop forwarding for `d` (from now).
    pub fn stall_for(&self, d: Duration) {
        self.update(|f| f.stall = Stall::Until(std::time::Instant::now() + d));
    }

    /// Stop forwarding until [`unstall`](Relay::unstall).
    pub fn stall_forever(&self) {
        self.update(|f| f.stall = Stall::Forever);
    }

    /// Resume forwarding (bytes held are released, in order, within ~20 ms).
    pub fn unstall(&self) {
        self.update(|f| f.stall = Stall::None);
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            resets: l(&c.resets),
            connect_failures: l(&c.connect_failures),
            active: l(&c.active),
            bytes_to_upstream: l(&c.to_up),
            bytes_to_downstream: l(&c.to_down),
            bytes_dropped: l(&c.dropped),
        }
    }

    /// Stop accepting, close every connection and wait for the worker to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown.trigger();
            h.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}
