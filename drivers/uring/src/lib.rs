//! # ferry-uring: io_uring event loops on pinned I/O workers
//!
//! The same runtime shape as `ferry-epoll` (one pinned thread per I/O worker, one
//! `SO_REUSEPORT` listener each, a timer wheel, the same generic [`Session`] glue for
//! HTTP/1.1, h2c or RESP), with the kernel doing the waiting and the copying through io_uring:
//!
//! - one **multishot accept** per listener: one submission, a completion per connection;
//! - one **multishot recv** per connection drawing from a **provided buffer ring** (256 × 16 KiB
//!   per worker): the kernel picks a buffer only when data arrives, so idle connections pin no
//!   receive memory. In this first slice the bytes are **copied** into the connection's
//!   `BytesMut` and the buffer goes straight back to the ring (one memcpy per read; lending
//!   ring buffers to the parser without a copy is a follow-up). A connection's first read
//!   keeps only its bytes, later ones reserve a read chunk when short of room, and every
//!   `ferry_epoll::IDLE_SWEEP` the connections holding no unconsumed input give their empty
//!   buffers back, so idle keep-alive connections stay cheap (as `ferry-epoll`);
//! - `send` (`MSG_NOSIGNAL`) of a single queued chunk (the common small response: no msghdr
//!   for the kernel to import), `sendmsg` of several as an iovec array: the `Bytes` are moved
//!   into the connection's in-flight slot and stay alive until the completion; a short write
//!   puts the rest back at the front of the queue;
//! - **batched submissions**: everything a loop turn produces goes in with the one
//!   `io_uring_enter` that also waits for the next completions;
//! - `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (plus `COOP_TASKRUN`) when the
//!   kernel has them, falling back to a plain ring otherwise;
//! - backpressure: each multishot recv ends by itself after [`RECV_CAP`] bytes (Linux 6.17+;
//!   plain multishot before) and is re-armed only while the session wants input; when a
//!   session stops wanting input its recv is also cancelled, so what it gets beyond its
//!   window is bounded by the cap, as epoll's one read past the check;
//! - [`start`] falls back to `ferry-epoll` with one line on stderr when io_uring cannot be set
//!   up (old kernel, `kernel.io_uring_disabled`, seccomp).
//!
//! Connections are closed only once no operation of theirs is in flight, so no buffer or fd
//! is reused under the kernel's feet. A reset (a recv error) or a failed send does not drop
//! what the peer sent before: the multishot recv delivers the queued bytes ahead of the
//! error, so the connection stays until it ended, its input is processed, nothing more is
//! sent, and the session is closed without `on_eof` (see `Session::close`).
//!
//! ## Measured, and off by default ([`UringOptions`](ferry_driver::UringOptions))
//!
//! Two features the io_uring literature recommends did not pay on this workload (`wrk -t1
//! -c64` against `ferry serve`, one worker pinned to core 0 of a shared 2-core VM, kernel
//! 6.18; server task-clock per request from `perf stat`, three alternating rounds, the same
//! binary):
//!
//! | option | µs/request, default | µs/request, with option | verdict |
//! |---|---|---|---|
//! | `registered_files` (sparse `IORING_REGISTER_FILES` table, each accepted socket registered at its token's slot, `Fixed` targets for recv/send) | 5.57 / 5.69 / 5.76 | 5.64 / 5.22 / 6.14 | within noise: the per-op `fdget` it saves is ~1% of a request, and it costs two `io_uring_register` calls per connection (register, free before close) |
//! | `send_zc` (`IORING_OP_SEND_ZC` for single-chunk sends; buffers held until the notification CQE) | 5.57 / 5.69 / 5.76 | 6.70 / 6.72 / 7.61 | 15–30% **worse**: loopback copies anyway, and every send costs a second completion |
//!
//! Both stay available as options for hosts where they pay (registered files with long-lived
//! connections and many ops each; `SEND_ZC` for large responses on a real NIC). The sparse
//! table is capped at `RLIMIT_NOFILE` (the kernel refuses more); tokens past its end use
//! plain descriptors. Direct accept (`IORING_FILE_INDEX_ALLOC`, no regular descriptor at all)
//! was not adopted: the driver still needs a descriptor for `shutdown(2)`, `getpeername`,
//! `SO_ERROR` and the `MSG_PEEK` before a lingering close.
//!
//! Outbound connections ([`WorkerCtx::connect`]): a non-blocking socket and `connect(2)`,
//! then a one-shot `POLLOUT` poll in the ring whose completion (with `SO_ERROR`) settles the
//! handshake; a session that gives up first (its connect deadline) has the poll cancelled.
//! Mail between connections of the worker ([`WorkerCtx::post`]) is delivered in the same
//! loop turn, as in `ferry-epoll`.
//!
//! ## Embedding
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferry_driver::{Launch, ListenAddr, Request, Response, ServerOptions, Service};
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn call(&self, _req: Request) -> Response {
//!         Response::text(200, "hello world\n")
//!     }
//! }
//!
//! let opts = ServerOptions { workers: 1, ..ServerOptions::default() };
//! let launch = Launch::prepare("127.0.0.1:0".parse::<ListenAddr>().unwrap(), opts, Arc::new(Hello)).unwrap();
//! let handle = ferry_uring::start(launch).unwrap(); // or epoll, if io_uring is unavailable
//! println!("driver={}", handle.driver);
//! handle.shutdown.trigger();
//! handle.wait();
//! ```
#![deny(missing_docs)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use ferry_driver::listen::{configure_accepted, has_unread_input};
use ferry_driver::metrics::bump;
use ferry_driver::outbound::{open_session, ConnectRequest};
use ferry_driver::spin::BusyPoll;
use ferry_driver::turn::{self, Turn};
use ferry_driver::{ConnInfo, DriverKind, HttpSession, Launch, ServerHandle, Session, WorkerCtx};
use ferry_proto::Instant;
use io_uring::types::{BufRingEntry, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;
use std::sync::Arc;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_WAKE: u64 = 4;
const OP_CANCEL: u64 = 5;
const OP_CONNECT: u64 = 6;

const BUF_GROUP: u16 = 0;
const BUF_COUNT: u16 = 256;
const BUF_SIZE: usize = 16 * 1024;
const MAX_IOV: usize = 64;
/// Most bytes one multishot recv may deliver before it ends (`sqe->optlen`, the kernel's
/// `IORING_RECV_MSHOT_LIM`, Linux 6.17+): the driver re-arms it only while the session
/// wants input, so a session that stops wanting input (backpressure) gets at most this much
/// more, plus one buffer, however long its cancellation takes to land. Without it the kernel
/// goes on copying a fast sender's bytes into the connection (a stalled client of the proxy
/// cost 1.5 MiB, not its 256 KiB window). Four buffers: a bulk transfer costs the same CPU
/// as uncapped (one buffer per arm cost 10-50% more), one re-arm per hundreds of small
/// requests.
const RECV_CAP: u32 = 4 * BUF_SIZE as u32;
/// Rounds of "drive touched connections, open queued connects, deliver local mail" per loop
/// turn before waiting again (the rest carries over, with a zero wait).
const MAX_ROUNDS: usize = 16;

/// Build an SQE against a connection's socket: by its index in the registered file table when
/// it has one (no per-op file lookup), else by descriptor.
macro_rules! on_fd {
    ($c:expr, |$f:ident| $sqe:expr) => {
        match $c.fixed {
            Some(i) => {
                let $f = Fixed(i);
                $sqe
            }
            None => {
                let $f = Fd($c.fd.as_raw_fd());
                $sqe
            }
        }
    };
}

fn ud(op: u64, gen: u32, token: usize) -> u64 {
    (op << 56) | (u64::from(gen & 0xFF_FFFF) << 32) | (token as u64 & 0xFFFF_FFFF)
}

fn ud_parts(u: u64) -> (u64, u32, usize) {
    (
        u >> 56,
        ((u >> 32) & 0xFF_FFFF) as u32,
        (u & 0xFFFF_FFFF) as usize,
    )
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let r = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries);
    match r {
        Ok(r) => Ok(r),
        Err(_) => IoUring::builder().setup_cqsize(entries * 4).build(entries),
    }
}

/// Whether an io_uring with a provided buffer ring can be set up on this host.
pub fn probe() -> io::Result<()> {
    let ring = build_ring(8)?;
    let b = BufRing::new(&ring, 8, 4096, 7)?;
    drop(b);
    let _ = ring.submitter().unregister_buf_ring(7);
    Ok(())
}

/// The opcodes this driver uses (or would use where it pays), by name, with whether the
/// kernel's `IORING_REGISTER_PROBE` reports them supported.
pub fn probe_opcodes() -> io::Result<Vec<(&'static str, bool)>> {
    use io_uring::opcode;
    let ring = build_ring(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    Ok([
        ("accept", opcode::Accept::CODE),
        ("recv", opcode::Recv::CODE),
        ("send", opcode::Send::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("send_zc", opcode::SendZc::CODE),
        ("connect", opcode::Connect::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
        ("close", opcode::Close::CODE),
        ("socket", opcode::Socket::CODE),
        ("timeout", opcode::Timeout::CODE),
    ]
    .into_iter()
    .map(|(name, code)| (name, p.is_supported(code)))
    .collect())
}

/// The `ferry probe` verdict: the ring with a provided buffer ring, and the opcode table.
pub fn probe_report() -> Result<String, String> {
    probe().map_err(|e| format!("io_uring unavailable: {e}"))?;
    let ops = probe_opcodes().map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let missing: Vec<&str> = ops.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    let needed = ["accept", "recv", "send", "poll_add", "async_cancel"];
    if let Some(n) = missing.iter().find(|n| needed.contains(n)) {
        return Err(format!("io_uring lacks the {n} opcode the driver needs"));
    }
    Ok(format!(
        "ring + provided buffer ring work; opcodes probed: {} supported{}",
        ops.len() - missing.len(),
        if missing.is_empty() {
            " (all, incl. send_zc, connect, socket)".to_string()
        } else {
            format!(", missing {}", missing.join(" "))
        }
    ))
}

/// Start one io_uring loop per prepared worker serving HTTP, or fall back to epoll (one line
/// on stderr) when io_uring is unavailable.
pub fn start(launch: Launch) -> io::Result<ServerHandle> {
    start_with::<HttpSession>(launch, Arc::new(()))
}

/// Start one io_uring loop per prepared worker serving protocol `S`, or fall back to epoll.
pub fn start_with<S: Session>(launch: Launch, shared: Arc<S::Shared>) -> io::Result<ServerHandle> {
    // The probe's ring is set up and torn down on a scratch thread: tearing a ring down can
    // queue task work that interrupts the owning thread's next blocking call, and a socket
    // call with a timeout then fails with EINTR instead of restarting (the caller's thread,
    // an application's, may be about to do exactly that).
    let probed = std::thread::Builder::new()
        .name("ferry-uring-probe".into())
        .spawn(probe)
        .map_err(io::Error::other)
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err(io::Error::other("probe panicked")))
        });
    if let Err(e) = probed {
        tracing::warn!("io_uring unavailable ({e}); falling back to epoll");
        return ferry_epoll::start_with::<S>(launch, shared);
    }
    turn::spawn_workers(
        launch,
        DriverKind::Uring,
        "ferry-uring",
        shared,
        run_worker_with::<S>,
    )
}

/// A provided buffer ring: `count` buffers of `size` bytes the kernel picks from on receive.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    mem: Vec<u8>,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, size: usize, bgid: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let ring_len = count as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        // The kernel requires the ring to be page aligned, which mmap guarantees.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = BufRing {
            ring: p.cast(),
            ring_len,
            mem: vec![0u8; count as usize * size],
            count,
            size,
            tail: 0,
        };
        // SAFETY: the ring memory is a live mapping of `count` entries that stays mapped until
        // `b` is dropped, after the ring (and its registration) are gone or unregistered.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, count, bgid, 0)?
        };
        for bid in 0..count {
            b.push(bid);
        }
        b.publish();
        Ok(b)
    }

    /// Queue buffer `bid` for the kernel (visible after [`publish`](Self::publish)).
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `idx < count`, so the entry lies inside the mapping; the kernel only reads
        // entries between its head and the published tail, which excludes this one until
        // `publish`.
        let e = unsafe { &mut *self.ring.add(idx) };
        let addr = self.mem.as_ptr() as u64 + (bid as usize * self.size) as u64;
        e.set_addr(addr);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of our mapping; the kernel reads
        // it concurrently, so it is written with an atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    #[inline]
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.size;
        &self.mem[start..start + len.min(self.size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

/// The send slot of a connection: the kernel reads `msg`, `iov` and the `chunks`' bytes until
/// the completion, so all three live here (allocated once per connection) until then.
struct Sending {
    busy: bool,
    /// A `SEND_ZC` result waiting for its notification (the buffers are held until then).
    zc_res: Option<i32>,
    chunks: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
}

impl Sending {
    fn new() -> Sending {
        // SAFETY: an all-zero msghdr is valid (no name, no iovec, no control data).
        let msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        Sending {
            busy: false,
            zc_res: None,
            chunks: Vec::with_capacity(8),
            iov: Vec::with_capacity(8),
            msg,
        }
    }
}

struct Conn<S> {
    fd: OwnedFd,
    /// Its slot in the registered file table (`UringOptions::registered_files`).
    fixed: Option<u32>,
    gen: u32,
    session: S,
    recv_armed: bool,
    recv_cancelling: bool,
    sending: Sending,
    /// Operations in flight (armed recv, send).
    ops: u32,
    eof: bool,
    /// The connection failed (a recv error, or a failed send): nothing more is written; the
    /// bytes still queued are read and processed, then it closes ([`broken`]).
    reset: bool,
    closing: bool,
    armed: Option<Instant>,
    linger_until: Option<Instant>,
    queued: bool,
    /// An outbound connect is in progress (a POLLOUT poll is armed while `connect_armed`).
    connecting: bool,
    connect_armed: bool,
    connect_cancelling: bool,
    /// Nothing read yet: the first read's bytes are kept in a buffer sized to them (a
    /// connection that sends one small request and idles holds a few hundred bytes of
    /// input); later reads reserve a whole read chunk when short of room, as epoll's.
    fresh: bool,
    /// The armed recv carries the byte cap ([`RECV_CAP`]).
    recv_capped: bool,
}

impl<S> Conn<S> {
    /// A connection just accepted or connecting (`connecting`), queued for its first drive.
    fn new(
        fd: OwnedFd,
        fixed: Option<u32>,
        gen: u32,
        session: S,
        armed: Option<Instant>,
        connecting: bool,
    ) -> Conn<S> {
        Conn {
            fd,
            fixed,
            gen,
            session,
            recv_armed: false,
            recv_cancelling: false,
            sending: Sending::new(),
            ops: 0,
            eof: false,
            reset: false,
            closing: false,
            armed,
            linger_until: None,
            queued: true,
            connecting,
            connect_armed: false,
            connect_cancelling: false,
            fresh: true,
            recv_capped: false,
        }
    }
}

struct Loop {
    ring: IoUring,
    bufs: BufRing,
    /// Slots of the sparse registered file table (0: not in use).
    files: u32,
    /// Send single chunks with `SEND_ZC`.
    send_zc: bool,
    /// The byte cap of each multishot recv ([`RECV_CAP`]; 0 on kernels that refuse it).
    recv_cap: u32,
}

impl Loop {
    /// Register `fd` at slot `token` of the file table, if there is one and it fits.
    fn register(&self, token: usize, fd: RawFd) -> Option<u32> {
        let slot = u32::try_from(token).ok().filter(|s| *s < self.files)?;
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .ok()
            .map(|_| slot)
    }

    /// Free a connection's slot before its descriptor closes (the table holds a reference to
    /// the socket until then).
    fn unregister(&self, slot: Option<u32>) {
        if let Some(slot) = slot {
            let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        }
    }

    /// Cancel the operation whose user data is `target` (its completion reports how it ended).
    fn cancel(&mut self, target: u64) {
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(ud(OP_CANCEL, 0, 0)),
        );
    }

    #[inline]
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY (for the pushes below): every entry we build points only at memory that
        // outlives the operation: the buffer ring, and per-connection `Sending` slots that are
        // kept until the completion arrives.
        loop {
            // SAFETY: see above.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }
}

/// Run one I/O worker's io_uring loop on the calling thread until shutdown completes.
///
/// If this thread cannot set up its ring (the probe in [`start`] passed, but e.g. a limit was
/// reached since), the worker says so on stderr and runs the epoll loop instead.
pub fn run_worker(ctx: WorkerCtx, listener: ferry_driver::Listener) -> io::Result<()> {
    run_worker_with::<HttpSession>(ctx, Some(listener), Arc::new(()))
}

/// Run one I/O worker's io_uring loop for protocol `S` (see [`run_worker`]); with no
/// `listener` the worker only carries outbound connections.
pub fn run_worker_with<S: Session>(
    mut ctx: WorkerCtx,
    listener: Option<ferry_driver::Listener>,
    shared: Arc<S::Shared>,
) -> io::Result<()> {
    let setup = build_ring(1024).and_then(|ring| {
        let bufs = BufRing::new(&ring, BUF_COUNT, BUF_SIZE, BUF_GROUP)?;
        let mut files = 0;
        if ctx.options.uring.registered_files {
            // The kernel caps the table at RLIMIT_NOFILE (EMFILE beyond); tokens past the
            // table's end use plain descriptors.
            let n = ctx
                .options
                .max_connections
                .min(nofile_limit())
                .clamp(1, 1 << 16) as u32;
            match ring.submitter().register_files_sparse(n) {
                Ok(()) => files = n,
                Err(e) => tracing::warn!(
                    "worker {}: no registered file table ({e}); using descriptors",
                    ctx.index
                ),
            }
        }
        let send_zc = ctx.options.uring.send_zc;
        Ok(Loop {
            ring,
            bufs,
            files,
            send_zc,
            recv_cap: RECV_CAP,
        })
    });
    let mut lp = match setup {
        Ok(lp) => lp,
        Err(e) => {
            tracing::warn!(
                "worker {}: io_uring setup failed ({e}); running epoll instead",
                ctx.index
            );
            return ferry_epoll::run_worker_with::<S>(ctx, listener, shared);
        }
    };
    let mut listener: Option<OwnedFd> = listener.map(OwnedFd::from);
    let mut accept_armed = false;
    let mut accept_cancelling = false;
    let mut accept_paused_until: Option<Instant> = None;
    let waker_fd = ctx.waker.as_raw_fd();
    lp.push(
        opcode::PollAdd::new(Fd(waker_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(OP_WAKE, 0, 0)),
    );

    let mut conns: Slab<Conn<S>> = Slab::with_capacity(1024);
    let mut turn: Turn<S> = Turn::new(&mut ctx, &*shared);
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    let mut drain_deadline: Option<Instant> = None;
    let mut next_sweep = ctx.clock.now() + ferry_epoll::IDLE_SWEEP;

    let mut spin = BusyPoll::new(ctx.options.busy_poll);
    loop {
        let now = ctx.clock.now();
        // (Re-)arm accepting.
        if accept_paused_until.is_some_and(|p| now >= p) {
            accept_paused_until = None;
        }
        if let Some(l) = listener.as_ref() {
            let room = conns.len() < ctx.options.max_connections;
            if !accept_armed && room && accept_paused_until.is_none() && drain_deadline.is_none() {
                lp.push(
                    opcode::AcceptMulti::new(Fd(l.as_raw_fd()))
                        .build()
                        .user_data(ud(OP_ACCEPT, 0, 0)),
                );
                accept_armed = true;
            } else if accept_armed && !room && !accept_cancelling {
                lp.cancel(ud(OP_ACCEPT, 0, 0));
                accept_cancelling = true;
            }
        }

        let sweep = (!conns.is_empty()).then_some(next_sweep);
        let mut timeout = turn.wait_timeout(now, &[accept_paused_until, drain_deadline, sweep]);
        lp.bufs.publish();
        if let Some(until) = spin.spin_until(now, timeout) {
            // Busy polling: submit and reap without sleeping (a zero-timeout wait still runs
            // the deferred task work) until a completion arrives or the window ends.
            let zero = Timespec::new();
            let args = SubmitArgs::new().timespec(&zero);
            while lp.ring.completion().is_empty() {
                if let Err(e) = lp.ring.submitter().submit_with_args(1, &args) {
                    match e.raw_os_error() {
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                        | Some(libc::EAGAIN) => {}
                        _ => return Err(e),
                    }
                }
                let t = ctx.clock.now();
                if t >= until {
                    timeout = BusyPoll::remaining(timeout, now, t);
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let r = if lp.ring.completion().is_empty() {
            match timeout {
                Some(t) => {
                    let ts = Timespec::from(t);
                    let args = SubmitArgs::new().timespec(&ts);
                    lp.ring.submitter().submit_with_args(1, &args)
                }
                None => lp.ring.submit_and_wait(1),
            }
        } else {
            lp.ring.submit()
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        bump(&ctx.metrics.loops, 1);
        let now = ctx.clock.now();

        cqes.clear();
        cqes.extend(
            lp.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        spin.record(now, !cqes.is_empty());
        for &(u, res, flags) in &cqes {
            let (op, g, token) = ud_parts(u);
            match op {
                OP_WAKE => {
                    ctx.waker.drain();
                    if !cqueue::more(flags) {
                        lp.push(
                            opcode::PollAdd::new(Fd(waker_fd), libc::POLLIN as u32)
                                .multi(true)
                                .build()
                                .user_data(ud(OP_WAKE, 0, 0)),
                        );
                    }
                }
                OP_ACCEPT => {
                    if !cqueue::more(flags) {
                        accept_armed = false;
                        accept_cancelling = false;
                    }
                    if res >= 0 {
                        // SAFETY: a successful accept completion hands us a new descriptor
                        // that nothing else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(res) };
                        if drain_deadline.is_some() {
                            continue;
                        }
                        configure_accepted(fd.as_raw_fd(), &ctx.options.listen);
                        let entry = conns.vacant_entry();
                        let token = entry.key();
                        let gen = turn::next_gen(&mut turn.gen, 0xFF_FFFF);
                        let peer = peer_addr(fd.as_raw_fd());
                        let info = ConnInfo {
                            worker: ctx.index,
                            token,
                            peer,
                        };
                        let Some(session) = S::open(&mut ctx, &shared, info, gen, now) else {
                            continue;
                        };
                        let armed = session.poll_timeout();
                        if let Some(d) = armed {
                            turn.wheel.insert(token, d);
                        }
                        let fixed = lp.register(token, fd.as_raw_fd());
                        entry.insert(Conn::new(fd, fixed, gen, session, armed, false));
                        turn.touched.push(token);
                    } else if res != -libc::ECANCELED
                        && res != -libc::EINTR
                        && res != -libc::ECONNABORTED
                    {
                        // EMFILE/ENFILE/ENOBUFS/ENOMEM: back off instead of spinning.
                        let e = io::Error::from_raw_os_error(-res);
                        accept_paused_until = Some(turn::accept_failed(&ctx, &e, now));
                        if accept_armed && !accept_cancelling {
                            lp.cancel(ud(OP_ACCEPT, 0, 0));
                            accept_cancelling = true;
                        }
                    }
                }
                OP_RECV => {
                    let bid = cqueue::buffer_select(flags);
                    let c = conns.get_mut(token).filter(|c| c.gen == g);
                    if let Some(c) = c {
                        if res > 0 {
                            if let Some(bid) = bid {
                                if c.linger_until.is_none() {
                                    let data = lp.bufs.get(bid, res as usize);
                                    let input = c.session.input();
                                    if input.capacity() - input.len() < data.len() {
                                        if !c.fresh {
                                            input.reserve(data.len().max(ctx.options.read_chunk));
                                        }
                                        c.fresh = false;
                                    }
                                    input.extend_from_slice(data);
                                    c.session.on_read(&ctx, res as usize);
                                    if c.session.input().len() >= ctx.options.read_chunk
                                        && !c.closing
                                    {
                                        // As epoll after a full read: a burst of completions
                                        // is consumed as it comes, not first piled up in one
                                        // buffer (which would outlive every byte cut from it).
                                        c.session.process(&mut ctx, now);
                                    }
                                }
                            }
                        } else if res == 0 {
                            c.eof = true;
                        } else if res == -libc::EINVAL && c.recv_capped {
                            // A kernel older than 6.17 refuses the capped multishot: go on
                            // without the cap (the next drive re-arms this one).
                            if lp.recv_cap != 0 {
                                tracing::debug!("multishot recv cap unsupported; uncapped");
                                lp.recv_cap = 0;
                            }
                        } else if res != -libc::ENOBUFS && res != -libc::ECANCELED {
                            // A reset: the bytes before it came in earlier completions.
                            c.eof = true;
                            c.reset = true;
                        }
                        if !cqueue::more(flags) {
                            c.recv_armed = false;
                            c.recv_cancelling = false;
                            c.ops -= 1;
                        }
                        if !c.queued {
                            c.queued = true;
                            turn.touched.push(token);
                        }
                    }
                    if let Some(bid) = bid {
                        lp.bufs.push(bid);
                    }
                }
                OP_CONNECT => {
                    if let Some(c) = conns.get_mut(token).filter(|c| c.gen == g) {
                        c.ops -= 1;
                        c.connect_armed = false;
                        c.connect_cancelling = false;
                        if !c.closing && c.connecting {
                            match so_error(c.fd.as_raw_fd()) {
                                Ok(()) if res >= 0 => {
                                    c.connecting = false;
                                    c.session.on_connected(&mut ctx, now);
                                }
                                Ok(()) => {
                                    c.session.connect_failed(
                                        &mut ctx,
                                        io::Error::from_raw_os_error(-res),
                                        now,
                                    );
                                    c.closing = true;
                                }
                                Err(e) => {
                                    c.session.connect_failed(&mut ctx, e, now);
                                    c.closing = true;
                                }
                            }
                        }
                        if !c.queued {
                            c.queued = true;
                            turn.touched.push(token);
                        }
                    }
                }
                OP_SEND => {
                    if let Some(c) = conns.get_mut(token).filter(|c| c.gen == g) {
                        let res = if cqueue::notif(flags) {
                            // SEND_ZC: the kernel let go of the buffers; the result came first.
                            c.sending.zc_res.take().unwrap_or(-libc::EIO)
                        } else if cqueue::more(flags) {
                            // SEND_ZC result: hold the buffers until the notification.
                            c.sending.zc_res = Some(res);
                            continue;
                        } else {
                            res
                        };
                        c.ops -= 1;
                        c.sending.busy = false;
                        if res >= 0 {
                            c.session.sent(&ctx, res as usize, &mut c.sending.chunks);
                        } else if res == -libc::ECONNRESET || res == -libc::EPIPE {
                            // The peer reset or is gone (the kernel shut the receive side
                            // too, so the recv ends): what it sent before is still read.
                            c.sending.chunks.clear();
                            c.reset = true;
                        } else {
                            c.sending.chunks.clear();
                            c.closing = true;
                        }
                        if !c.queued {
                            c.queued = true;
                            turn.touched.push(token);
                        }
                    }
                }
                _ => {}
            }
        }

        // Mail (application workers' replies, messages from other connections), tick, retries.
        turn.between_events(&mut conns, parts::<S>, &mut ctx, &shared, now);

        // Timers.
        turn.expire(&mut conns, parts::<S>, &mut ctx, now, |c, ctx| {
            c.armed = None;
            if c.linger_until.is_some_and(|l| now >= l) {
                c.closing = true;
            } else if c.linger_until.is_none() {
                c.session.on_timeout(ctx, now);
            }
        });

        if now >= next_sweep {
            next_sweep = now + ferry_epoll::IDLE_SWEEP;
            sweep_idle(&mut conns);
        }

        // Shutdown: stop accepting, close idle connections, drain the rest.
        if drain_deadline.is_none() && ctx.shutdown.is_triggered() {
            drain_deadline = Some(now + ctx.options.drain_timeout);
            if listener.take().is_some() && accept_armed && !accept_cancelling {
                lp.cancel(ud(OP_ACCEPT, 0, 0));
                accept_cancelling = true;
            }
            turn.begin_shutdown(&mut conns, parts::<S>, &mut ctx, now);
        }

        let mut rounds = 0;
        loop {
            for t in turn.touched.drain(..) {
                let done = match conns.get_mut(t) {
                    Some(c) => {
                        c.queued = false;
                        drive(c, t, &mut ctx, now, &mut lp);
                        if !c.closing {
                            turn.any_pending |= c.session.has_pending();
                            let next = c.linger_until.or_else(|| c.session.poll_timeout());
                            turn::arm(&mut turn.wheel, t, &mut c.armed, next);
                        }
                        c.closing && c.ops == 0
                    }
                    None => false,
                };
                if done {
                    let c = conns.remove(t);
                    turn.wheel.cancel(t);
                    lp.unregister(c.fixed);
                    c.session.close(&mut ctx);
                    drop(c.fd);
                }
            }
            // Outbound connects queued by sessions: opened now, driven in the next round.
            let more = turn.end_round(
                &mut conns,
                parts::<S>,
                &mut ctx,
                &shared,
                now,
                0xFF_FFFF,
                |c| c.armed,
                |conns, ctx, req, gen| open_outbound(conns, &mut lp, ctx, &shared, req, gen, now),
            );
            rounds += 1;
            if !more || rounds >= MAX_ROUNDS {
                break;
            }
        }

        if let Some(d) = drain_deadline {
            if conns.is_empty() && !accept_armed {
                return Ok(());
            }
            if now >= d {
                // Deadline: cancel what is left and leave once the kernel let go of it.
                let mut busy = false;
                for (t, c) in conns.iter_mut() {
                    if c.recv_armed && !c.recv_cancelling {
                        lp.cancel(ud(OP_RECV, c.gen, t));
                        c.recv_cancelling = true;
                    }
                    // SAFETY: shutting down a socket we own; in-flight sends then fail fast.
                    unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    c.closing = true;
                    busy |= c.ops > 0;
                }
                let ids: Vec<usize> = conns
                    .iter()
                    .filter(|(_, c)| c.ops == 0)
                    .map(|(t, _)| t)
                    .collect();
                for t in ids {
                    let c = conns.remove(t);
                    lp.unregister(c.fixed);
                    c.session.close(&mut ctx);
                }
                if !busy && !accept_armed {
                    return Ok(());
                }
            }
        }
    }
}

/// [`ferry_epoll::IDLE_SWEEP`]: connections that hold no unconsumed input give their buffers
/// back (the next read allocates one sized to what it brings, as the first read does), as in
/// `ferry-epoll`.
#[cold]
fn sweep_idle<S: Session>(conns: &mut Slab<Conn<S>>) {
    for (_, c) in conns.iter_mut() {
        let input = c.session.input();
        if !c.fresh && input.is_empty() {
            *input = bytes::BytesMut::new();
            c.fresh = true;
            c.session.release_idle();
        }
    }
}

/// A connection's session and queued flag, for the shared loop-turn helpers.
fn parts<S>(c: &mut Conn<S>) -> (&mut S, &mut bool) {
    (&mut c.session, &mut c.queued)
}

fn peer_addr(fd: RawFd) -> Option<std::net::SocketAddr> {
    // SAFETY: borrow the descriptor as a TcpStream only to ask for the peer address, then
    // release it with into_raw_fd so it is not closed here.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let a = s.peer_addr().ok();
    let _ = s.into_raw_fd();
    a
}

fn drive<S: Session>(c: &mut Conn<S>, t: usize, ctx: &mut WorkerCtx, now: Instant, lp: &mut Loop) {
    if !c.closing && c.session.wants_abort() {
        abort(c, t, lp);
    }
    if c.connecting && !c.closing && c.session.is_finished() {
        // The session gave up (its connect timeout): cancel the connect.
        c.closing = true;
    }
    if c.closing {
        if c.connect_armed && !c.connect_cancelling {
            lp.cancel(ud(OP_CONNECT, c.gen, t));
            c.connect_cancelling = true;
        }
        if c.recv_armed && !c.recv_cancelling {
            lp.cancel(ud(OP_RECV, c.gen, t));
            c.recv_cancelling = true;
        }
        return;
    }
    if c.reset && c.linger_until.is_none() {
        // (Only `drive` calls itself, in tail position: the compiler keeps it inlined in
        // the loop as a loop of its own.)
        if broken(c, t, ctx, now, lp) {
            drive(c, t, ctx, now, lp);
        }
        return;
    }
    if c.linger_until.is_some() {
        if c.eof {
            c.closing = true;
            drive(c, t, ctx, now, lp);
            return;
        }
        c.session.input().clear();
        if !c.recv_armed {
            arm_recv(c, t, lp);
        }
        return;
    }
    if c.connecting {
        return;
    }
    if c.session.wants_process() {
        c.session.process(ctx, now);
    }
    if c.eof && !c.session.saw_eof() {
        c.session.on_eof(ctx, now);
    }
    if !c.sending.busy && c.session.has_output() {
        let sd = &mut c.sending;
        sd.chunks.clear();
        c.session.take_out(MAX_IOV, &mut sd.chunks);
        if !sd.chunks.is_empty() {
            let sqe = if let [b] = sd.chunks.as_slice() {
                // One chunk (the common small response): a plain send, no msghdr to import.
                let (p, n) = (b.as_ptr(), b.len().min(u32::MAX as usize) as u32);
                let f = libc::MSG_NOSIGNAL;
                if lp.send_zc {
                    on_fd!(c, |fd| opcode::SendZc::new(fd, p, n).flags(f).build())
                } else {
                    on_fd!(c, |fd| opcode::Send::new(fd, p, n).flags(f).build())
                }
            } else {
                sd.iov.clear();
                sd.iov.extend(sd.chunks.iter().map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut _,
                    iov_len: b.len(),
                }));
                sd.msg.msg_iov = sd.iov.as_mut_ptr();
                sd.msg.msg_iovlen = sd.iov.len();
                let m = &*sd.msg;
                on_fd!(c, |fd| opcode::SendMsg::new(fd, m)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build())
            }
            .user_data(ud(OP_SEND, c.gen, t));
            sd.busy = true;
            c.ops += 1;
            lp.push(sqe);
        }
    }
    let wants = c.session.wants_read(ctx);
    if wants && !c.recv_armed && !c.eof {
        arm_recv(c, t, lp);
    } else if !wants && c.recv_armed && !c.recv_cancelling && !c.session.is_finished() {
        // Backpressure: stop the multishot recv until the session wants input again.
        lp.cancel(ud(OP_RECV, c.gen, t));
        c.recv_cancelling = true;
    }
    if c.session.wants_abort() {
        abort(c, t, lp);
        drive(c, t, ctx, now, lp);
        return;
    }
    if !c.sending.busy && !c.session.has_output() && c.session.poll_shutdown_write() {
        // SAFETY: half-closing a socket we own.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
    }
    if c.session.is_finished() && !c.sending.busy {
        // SAFETY: half-closing a socket we own.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
        if c.eof || (c.session.input().is_empty() && !has_unread_input(c.fd.as_raw_fd())) {
            c.closing = true;
            drive(c, t, ctx, now, lp);
        } else {
            c.linger_until = Some(now + ctx.options.linger);
            c.session.input().clear();
            if !c.recv_armed {
                arm_recv(c, t, lp);
            }
        }
    }
}

/// The connection failed: a recv reported an error (a reset), or a send failed (`EPIPE`,
/// `ECONNRESET`). Whatever the peer sent before is still handed to the session, as far as it
/// wants input: the multishot recv delivers the bytes still queued before it ends with the
/// error (or 0), in order, so it stays armed (armed again after `ENOBUFS`) until then; the
/// input is processed; nothing is written any more. Then the connection closes (the
/// session's `close` follows; it hears no `on_eof`, so a reset never passes for a clean
/// end). Returns `true` once it is closing (the caller drives it on, to cancel what is
/// left).
#[cold]
#[inline(never)]
fn broken<S: Session>(
    c: &mut Conn<S>,
    t: usize,
    ctx: &mut WorkerCtx,
    now: Instant,
    lp: &mut Loop,
) -> bool {
    if c.session.wants_process() {
        c.session.process(ctx, now);
    }
    if !c.eof && !c.connecting && c.session.wants_read(ctx) {
        if !c.recv_armed {
            arm_recv(c, t, lp);
        }
        return false;
    }
    // The recv ended (or the session wants no more input: the rest stays unread).
    c.closing = true;
    true
}

/// [`Session::wants_abort`]: close with an RST (`SO_LINGER {1, 0}` on the fd, closed once
/// the ring let go of it) and cancel a send in flight so nothing more goes out first.
fn abort<S>(c: &mut Conn<S>, t: usize, lp: &mut Loop) {
    let _ = ferry_driver::driven::linger_zero(c.fd.as_raw_fd());
    c.closing = true;
    if c.sending.busy {
        lp.push(
            opcode::AsyncCancel::new(ud(OP_SEND, c.gen, t))
                .build()
                .user_data(ud(OP_CANCEL, 0, 0)),
        );
    }
}

/// The soft `RLIMIT_NOFILE`: the most slots a registered file table may have.
fn nofile_limit() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid local we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        usize::try_from(r.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// The pending error of a socket (`SO_ERROR`): `Ok` when none.
fn so_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `err`, a valid c_int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Open a queued outbound connection: a non-blocking socket and `connect(2)`, then a
/// one-shot `POLLOUT` poll in the ring that completes when the handshake does (the socket
/// needs no `sockaddr` kept alive for the kernel, unlike `IORING_OP_CONNECT`). Returns its
/// token, or `None` when the session refused it or the connect failed at once (the session
/// was told and closed).
fn open_outbound<S: Session>(
    conns: &mut Slab<Conn<S>>,
    lp: &mut Loop,
    ctx: &mut WorkerCtx,
    shared: &Arc<S::Shared>,
    req: ConnectRequest,
    gen: u32,
    now: Instant,
) -> Option<usize> {
    let entry = conns.vacant_entry();
    let token = entry.key();
    let (session, (fd, done)) =
        open_session::<S, _>(ctx, shared, &req, token, gen, now, start_connect)?;
    configure_accepted(fd.as_raw_fd(), &ctx.options.listen);
    let armed = session.poll_timeout();
    let fixed = lp.register(token, fd.as_raw_fd());
    let mut c = Conn::new(fd, fixed, gen, session, armed, !done);
    if done {
        c.session.on_connected(ctx, now);
    } else {
        lp.push(
            opcode::PollAdd::new(Fd(c.fd.as_raw_fd()), libc::POLLOUT as u32)
                .build()
                .user_data(ud(OP_CONNECT, gen, token)),
        );
        c.connect_armed = true;
        c.ops += 1;
    }
    entry.insert(c);
    Some(token)
}

/// A non-blocking TCP socket with its connect started: `(fd, true)` if it completed at once.
fn start_connect(addr: std::net::SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(
        domain,
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    match sock.connect(&addr.into()) {
        Ok(()) => Ok((sock.into(), true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((sock.into(), false)),
        Err(e) => Err(e),
    }
}

fn arm_recv<S>(c: &mut Conn<S>, t: usize, lp: &mut Loop) {
    let sqe = on_fd!(c, |fd| opcode::RecvMulti::new(fd, BUF_GROUP).build());
    let sqe = with_optlen(sqe, lp.recv_cap);
    c.recv_capped = lp.recv_cap != 0;
    lp.push(sqe.user_data(ud(OP_RECV, c.gen, t)));
    c.recv_armed = true;
    c.ops += 1;
}

/// Set an SQE's `optlen` (for a multishot recv: the most bytes it delivers before it ends),
/// which `io-uring` 0.7 has no setter for.
#[inline]
fn with_optlen(e: squeue::Entry, optlen: u32) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    /// `optlen`'s offset in the kernel's `struct io_uring_sqe` (a union with `file_index`
    /// and `splice_fd_in`), as in `include/uapi/linux/io_uring.h`.
    const OPTLEN_AT: usize = 44;
    // SAFETY: `squeue::Entry` is a `#[repr(C)]` wrapper of the kernel's 64-byte
    // `io_uring_sqe` (size checked above), plain integers with no invalid bit patterns, so
    // it may be viewed as bytes and back.
    let mut b: [u8; 64] = unsafe { std::mem::transmute(e) };
    b[OPTLEN_AT..OPTLEN_AT + 4].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above; only the `optlen` field changed.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optlen_lands_in_the_sqe() {
        let e = opcode::RecvMulti::new(Fd(3), BUF_GROUP)
            .build()
            .user_data(7);
        let e = with_optlen(e, 0x0001_2345);
        // SAFETY: as in `with_optlen`.
        let b: [u8; 64] = unsafe { std::mem::transmute(e) };
        assert_eq!(b[44..48], 0x0001_2345u32.to_ne_bytes());
        assert_eq!(b[0], opcode::RecvMulti::CODE);
        assert_eq!(b[32..40], 7u64.to_ne_bytes());
        assert_eq!(b[4..8], 3i32.to_ne_bytes());
    }

    #[test]
    fn user_data_round_trips() {
        let u = ud(OP_SEND, 0x12_3456, 0xABCD_EF01);
        assert_eq!(ud_parts(u), (OP_SEND, 0x12_3456, 0xABCD_EF01));
    }

    #[test]
    fn opcode_probe_names_every_opcode() {
        if let Ok(ops) = probe_opcodes() {
            assert!(ops.iter().any(|(n, _)| *n == "send_zc"));
            // Whatever the kernel, the driver's core opcodes exist wherever a ring does.
            assert!(ops.iter().any(|(n, ok)| *n == "recv" && *ok), "{ops:?}");
            assert!(probe_report().is_ok());
        }
    }

    #[test]
    fn probe_reports() {
        // Either works or explains itself; never panics.
        let _ = probe();
    }
}
