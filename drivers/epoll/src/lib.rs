//! # ferry-epoll: edge-triggered epoll (mio) event loops on pinned I/O workers
//!
//! One thread per I/O worker, pinned to one CPU of the allowed set, each with its own
//! `SO_REUSEPORT` listener (the kernel spreads connections), its own `mio::Poll`, a slab of
//! connections and a [`TimerWheel`](ferry_driver::TimerWheel). Per connection the loop:
//!
//! 1. reads into the session's `BytesMut` until a short read or `WouldBlock` (edge-triggered:
//!    a readiness event is reported once, so the loop MUST drain it; a read shorter than asked
//!    drained the socket, so the `recv` that would only say `EAGAIN` is skipped, as nginx
//!    does; it remembers "still readable" when it stops early for backpressure, resuming
//!    without a new event). `recv`/`writev` are raw system calls, not libc's cancellation-point
//!    wrappers. A connection's first read goes through the worker's scratch buffer and keeps
//!    only its bytes; later reads reserve a read chunk; every [`IDLE_SWEEP`] the connections
//!    holding no unconsumed input give their empty buffers back (nginx frees its buffers on
//!    keep-alive), so an idle keep-alive connection costs about 1 KiB of heap, not 20;
//! 2. feeds the session's protocol state machine (any [`Session`]: HTTP/1.1, h2c, RESP; the
//!    loop is generic over it and knows no protocol), which hands its events to the
//!    application (inline, or over the bounded channels to application workers);
//! 3. writes the queued `Bytes` with one `writev` (an `IoSlice` per chunk; `sendto` when
//!    there is one, which skips the VFS layer), registering
//!    writable interest only while output is pending after a `WouldBlock`;
//! 4. arms the connection's timer from `poll_timeout`.
//!
//! Edge cases, as mio's `Poll` documents them: wake-ups can be spurious (every handler treats
//! `WouldBlock` as "nothing to do"); `EINTR` is retried; accepting pauses at the connection
//! limit and backs off on `EMFILE`/`ENFILE` (a timer, never a busy loop); a closing connection
//! shuts down its write side and lingers (discarding input) until the peer's FIN or a deadline,
//! so a final response is not destroyed by a reset. A reset (a read error) or a failed write
//! (`EPIPE`, `ECONNRESET`) does not drop what the peer sent before: Linux's `recv` returns
//! the queued bytes ahead of the error, so the driver reads them (as far as the session wants
//! input), processes them, writes nothing more and closes the session without `on_eof` (see
//! `Session::close`).
//!
//! Outbound connections ([`WorkerCtx::connect`]) are non-blocking `connect(2)`s registered
//! for readable and writable readiness; the first writable (or error) event settles them
//! (`take_error`, then `peer_addr`, as mio documents for Linux) and the session hears
//! `on_connected` or `connect_failed`. Mail between connections of the worker
//! ([`WorkerCtx::post`]) is delivered in the same loop turn: the loop alternates "drive the
//! touched connections, open queued connects, deliver local mail" until nothing is left (at
//! most a few rounds, then it polls without blocking).
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
//! let opts = ServerOptions { workers: 2, ..ServerOptions::default() };
//! let launch = Launch::prepare("127.0.0.1:8080".parse::<ListenAddr>().unwrap(), opts, Arc::new(Hello)).unwrap();
//! let handle = ferry_epoll::start(launch).unwrap();
//! // ... later, from a signal handler thread:
//! handle.shutdown.trigger();
//! handle.wait();
//! ```
#![deny(missing_docs)]

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ferry_driver::listen::{configure_accepted, has_unread_input, recv_into};
use ferry_driver::metrics::bump;
use ferry_driver::outbound::{open_session, ConnectRequest};
use ferry_driver::spin::BusyPoll;
use ferry_driver::turn::{self, Turn};
use ferry_driver::Listener;
use ferry_driver::{ConnInfo, DriverKind, HttpSession, Launch, ServerHandle, Session, WorkerCtx};
use ferry_proto::Instant;
use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::sync::Arc;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const MAX_IOV: usize = 64;
/// Slices tried first per write (the full `MAX_IOV` array only when these are all filled).
const FEW_IOV: usize = 4;
/// Rounds of "drive touched connections, open queued connects, deliver local mail" per loop
/// turn before polling again (the rest carries over, with a zero poll timeout).
const MAX_ROUNDS: usize = 16;
/// How often the loop gives back the empty buffers of connections holding no unconsumed
/// input: the input buffer (the next read allocates one sized to what it brings, as the first
/// read does) and the session's ([`Session::release_idle`]), so idle keep-alive connections do
/// not each pin a read chunk and an output buffer (nginx frees its buffers on keep-alive the
/// same way). A busy connection pays one reallocation per sweep; tracking which connections
/// read since the last sweep would cost every read.
pub const IDLE_SWEEP: Duration = Duration::from_secs(2);

/// Start one event loop thread per prepared worker, serving HTTP.
pub fn start(launch: Launch) -> io::Result<ServerHandle> {
    start_with::<HttpSession>(launch, Arc::new(()))
}

/// Start one event loop thread per prepared worker, serving protocol `S`.
pub fn start_with<S: Session>(launch: Launch, shared: Arc<S::Shared>) -> io::Result<ServerHandle> {
    turn::spawn_workers(
        launch,
        DriverKind::Epoll,
        "ferry-epoll",
        shared,
        run_worker_with::<S>,
    )
}

/// An accepted connection: TCP or Unix-domain.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        // Raw system calls, not libc's wrappers (cancellation points with pthread bookkeeping
        // around every call). One slice goes out with `sendto`, which enters the socket layer
        // directly; `writev` first passes the VFS (descriptor position lock, iovec import,
        // permission and fsnotify hooks).
        let n = if let [one] = iov {
            // SAFETY: `one` is a valid borrowed slice of `one.len()` bytes for this call; no
            // destination address is given.
            unsafe {
                libc::syscall(
                    libc::SYS_sendto,
                    self.as_raw_fd(),
                    one.as_ptr(),
                    one.len(),
                    libc::MSG_NOSIGNAL,
                    std::ptr::null::<libc::sockaddr>(),
                    0 as libc::socklen_t,
                )
            }
        } else {
            // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix; the kernel
            // reads `iov.len()` entries and the bytes they point at, all borrowed for this
            // call.
            unsafe {
                libc::syscall(
                    libc::SYS_writev,
                    self.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                )
            }
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A listening socket: TCP or Unix-domain.
enum Acceptor {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Acceptor {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Acceptor::Tcp(l) => l,
            Acceptor::Unix(l) => l,
        }
    }

    fn accept(&self) -> io::Result<(Stream, Option<std::net::SocketAddr>)> {
        match self {
            Acceptor::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), Some(a))),
            Acceptor::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
        }
    }
}

struct Conn<S> {
    stream: Stream,
    session: S,
    readable: bool,
    write_blocked: bool,
    write_interest: bool,
    armed: Option<Instant>,
    /// Set once our side is done: the write side is shut down and we wait for the peer's FIN.
    linger_until: Option<Instant>,
    queued: bool,
    /// The peer's FIN (or an error) was reported: read until 0 even after short reads.
    read_closed: bool,
    /// An outbound connect is in progress: no I/O until it completes.
    connecting: bool,
    /// Nothing read yet: the first read goes through the worker's scratch buffer and only
    /// its bytes are kept ([`recv_exact`]), so a connection that sends one small request and
    /// idles holds a few hundred bytes of input, not a whole read chunk.
    fresh: bool,
}

/// Run one I/O worker's HTTP loop on the calling thread until shutdown completes.
pub fn run_worker(ctx: WorkerCtx, listener: Listener) -> io::Result<()> {
    run_worker_with::<HttpSession>(ctx, Some(listener), Arc::new(()))
}

/// One `epoll_wait`; an interrupted wait is an empty one.
fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
    match poll.poll(events, timeout) {
        Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
        _ => Ok(()),
    }
}

/// Run one I/O worker's loop for protocol `S` on the calling thread until shutdown completes;
/// with no `listener` the worker only carries outbound connections.
pub fn run_worker_with<S: Session>(
    mut ctx: WorkerCtx,
    listener: Option<Listener>,
    shared: Arc<S::Shared>,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = match listener {
        Some(Listener::Tcp(l)) => {
            l.set_nonblocking(true)?;
            Some(Acceptor::Tcp(TcpListener::from_std(l)))
        }
        Some(Listener::Unix(l)) => {
            l.set_nonblocking(true)?;
            Some(Acceptor::Unix(UnixListener::from_std(l)))
        }
        None => None,
    };
    if let Some(l) = listener.as_mut() {
        poll.registry()
            .register(l.source(), LISTENER, Interest::READABLE)?;
    }
    let waker_fd = ctx.waker.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&waker_fd), WAKER, Interest::READABLE)?;

    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn<S>> = Slab::with_capacity(1024);
    let mut turn: Turn<S> = Turn::new(&mut ctx, &*shared);
    let mut accept_ready = false;
    let mut accept_paused_until: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut next_sweep = ctx.clock.now() + IDLE_SWEEP;

    let mut spin = BusyPoll::new(ctx.options.busy_poll);

    loop {
        let start = ctx.clock.now();
        let sweep = (!conns.is_empty()).then_some(next_sweep);
        let mut timeout = turn.wait_timeout(start, &[accept_paused_until, drain_deadline, sweep]);
        let mut polled = false;
        if let Some(until) = spin.spin_until(start, timeout) {
            // Busy polling: look without sleeping until something arrives or the window ends.
            loop {
                poll_once(&mut poll, &mut events, Some(Duration::ZERO))?;
                let t = ctx.clock.now();
                if !events.is_empty() {
                    polled = true;
                    break;
                }
                if t >= until {
                    timeout = BusyPoll::remaining(timeout, start, t);
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !polled {
            poll_once(&mut poll, &mut events, timeout)?;
        }
        bump(&ctx.metrics.loops, 1);
        let now = ctx.clock.now();
        spin.record(now, !events.is_empty());

        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept_ready = true,
                WAKER => ctx.waker.drain(),
                Token(t) => {
                    if let Some(c) = conns.get_mut(t) {
                        if ev.is_read_closed() || ev.is_error() {
                            c.read_closed = true;
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                        if ev.is_writable() || ev.is_error() {
                            c.write_blocked = false;
                        }
                        if !c.queued {
                            c.queued = true;
                            turn.touched.push(t);
                        }
                    }
                }
            }
        }

        // Mail (application workers' replies, messages from other connections), tick, retries.
        turn.between_events(&mut conns, parts::<S>, &mut ctx, &shared, now);

        // Timers.
        turn.expire(&mut conns, parts::<S>, &mut ctx, now, |c, ctx| {
            c.armed = None;
            if c.linger_until.is_none() {
                c.session.on_timeout(ctx, now);
            }
        });

        if now >= next_sweep {
            next_sweep = now + IDLE_SWEEP;
            sweep_idle(&mut conns);
        }

        // Shutdown: stop accepting, close idle connections, drain the rest.
        if drain_deadline.is_none() && ctx.shutdown.is_triggered() {
            drain_deadline = Some(now + ctx.options.drain_timeout);
            if let Some(mut l) = listener.take() {
                let _ = poll.registry().deregister(l.source());
            }
            turn.begin_shutdown(&mut conns, parts::<S>, &mut ctx, now);
        }

        let mut rounds = 0;
        loop {
            for t in turn.touched.drain(..) {
                let keep = match conns.get_mut(t) {
                    Some(c) => {
                        c.queued = false;
                        let keep = drive(c, &mut ctx, now, &mut scratch);
                        if keep {
                            turn.any_pending |= c.session.has_pending();
                            let want_write =
                                c.connecting || (c.write_blocked && c.session.has_output());
                            if want_write != c.write_interest {
                                let interest = if want_write {
                                    Interest::READABLE | Interest::WRITABLE
                                } else {
                                    Interest::READABLE
                                };
                                if poll
                                    .registry()
                                    .reregister(c.stream.source(), Token(t), interest)
                                    .is_ok()
                                {
                                    c.write_interest = want_write;
                                }
                            }
                            let next = c.linger_until.or_else(|| c.session.poll_timeout());
                            turn::arm(&mut turn.wheel, t, &mut c.armed, next);
                            c.linger_until.is_none_or(|l| now < l)
                        } else {
                            false
                        }
                    }
                    None => true,
                };
                if !keep {
                    let c = conns.remove(t);
                    turn.wheel.cancel(t);
                    c.session.close(&mut ctx);
                    drop(c.stream);
                    if accept_ready {
                        accept_paused_until = accept_paused_until.filter(|p| *p > now);
                    }
                }
            }
            // Outbound connects queued by sessions: opened now, driven in the next round.
            let more = turn.end_round(
                &mut conns,
                parts::<S>,
                &mut ctx,
                &shared,
                now,
                u32::MAX,
                |c| c.armed,
                |conns, ctx, req, gen| open_outbound(conns, &poll, ctx, &shared, req, gen, now),
            );
            rounds += 1;
            if !more || rounds >= MAX_ROUNDS {
                break;
            }
        }

        // Accept.
        if accept_paused_until.is_some_and(|p| now >= p) {
            accept_paused_until = None;
        }
        if accept_ready && accept_paused_until.is_none() {
            if let Some(l) = listener.as_ref() {
                loop {
                    if conns.len() >= ctx.options.max_connections {
                        break; // resumes when a connection closes
                    }
                    match l.accept() {
                        Ok((mut stream, peer)) => {
                            configure_accepted(stream.as_raw_fd(), &ctx.options.listen);
                            let entry = conns.vacant_entry();
                            let token = entry.key();
                            let gen = turn::next_gen(&mut turn.gen, u32::MAX);
                            let info = ConnInfo {
                                worker: ctx.index,
                                token,
                                peer,
                            };
                            let Some(session) = S::open(&mut ctx, &shared, info, gen, now) else {
                                continue;
                            };
                            if poll
                                .registry()
                                .register(stream.source(), Token(token), Interest::READABLE)
                                .is_err()
                            {
                                session.close(&mut ctx);
                                continue;
                            }
                            let armed = session.poll_timeout();
                            if let Some(d) = armed {
                                turn.wheel.insert(token, d);
                            }
                            entry.insert(Conn {
                                stream,
                                session,
                                readable: false,
                                write_blocked: false,
                                write_interest: false,
                                armed,
                                linger_until: None,
                                queued: false,
                                read_closed: false,
                                connecting: false,
                                fresh: true,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            accept_ready = false;
                            break;
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                            ) => {}
                        Err(e) => {
                            // EMFILE/ENFILE/ENOBUFS/ENOMEM: back off instead of spinning.
                            accept_paused_until = Some(turn::accept_failed(&ctx, &e, now));
                            break;
                        }
                    }
                }
            }
        }

        if let Some(d) = drain_deadline {
            if conns.is_empty() || now >= d {
                for c in conns.drain() {
                    c.session.close(&mut ctx);
                }
                return Ok(());
            }
        }
    }
}

/// A connection's session and queued flag, for the shared loop-turn helpers.
fn parts<S>(c: &mut Conn<S>) -> (&mut S, &mut bool) {
    (&mut c.session, &mut c.queued)
}

/// Move bytes for one connection. Returns `false` when it must be closed now.
// Inlined into the loop, its one caller: this runs a few times per request, and a call costs
// saving and restoring every register it uses.
#[inline]
fn drive<S: Session>(
    c: &mut Conn<S>,
    ctx: &mut WorkerCtx,
    now: Instant,
    scratch: &mut [u8],
) -> bool {
    if c.session.wants_abort() {
        return abort(c);
    }
    if c.connecting {
        match connect_status(&c.stream) {
            Ok(false) => return !c.session.is_finished(),
            Ok(true) => {
                c.connecting = false;
                c.readable = true;
                c.write_blocked = false;
                c.session.on_connected(ctx, now);
            }
            Err(e) => {
                c.session.connect_failed(ctx, e, now);
                return false;
            }
        }
    }
    if c.linger_until.is_some() {
        return linger(c, scratch);
    }
    let chunk = ctx.options.read_chunk;
    // Whether the session may be finished or aborting now; `false` when the last look in the
    // loop said neither, and nothing changed since.
    let mut ended = false;
    for _ in 0..32 {
        let mut progress = false;
        // Read until WouldBlock, or until the session applies backpressure.
        while c.readable && c.session.wants_read(ctx) {
            let input = c.session.input();
            // A fresh connection has no buffer: `fresh` is looked at only when room is short.
            let r = if input.capacity() - input.len() < chunk / 4 && c.fresh {
                recv_exact(&c.stream, input, scratch, &mut c.fresh)
            } else {
                recv_into(&c.stream, input, chunk)
            };
            match r {
                Ok((0, _)) => {
                    c.readable = false;
                    c.session.on_eof(ctx, now);
                    progress = true;
                }
                Ok((n, asked)) => {
                    c.session.on_read(ctx, n);
                    progress = true;
                    if n < asked && !c.read_closed {
                        // A short read drained the socket; new data raises a new edge.
                        c.readable = false;
                    }
                    if c.session.input().len() >= chunk {
                        c.session.process(ctx, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return broken(c, ctx, now, scratch),
            }
        }
        if c.session.wants_process() {
            c.session.process(ctx, now);
        }
        // Write what is queued, vectored.
        // An abort discards the unsent output (`Session::wants_abort`): nothing more is written.
        while c.session.has_output() && !c.write_blocked && !c.session.wants_abort() {
            let r = {
                // Usually one or two chunks are queued: look with a small array first and
                // build the full one only when it is filled.
                let mut few = [IoSlice::new(&[]); FEW_IOV];
                let n = c.session.fill_iov(&mut few);
                if n < FEW_IOV {
                    c.stream.write_vectored(&few[..n])
                } else {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let n = c.session.fill_iov(&mut iov);
                    c.stream.write_vectored(&iov[..n])
                }
            };
            match r {
                Ok(0) => return broken(c, ctx, now, scratch),
                Ok(n) => {
                    c.session.written(ctx, n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return broken(c, ctx, now, scratch),
            }
        }
        if c.session.is_finished() || c.session.wants_abort() {
            ended = true;
            break;
        }
        if !c.session.has_output() && c.session.poll_shutdown_write() {
            c.stream.shutdown_write();
            // The session changed: look at it again after the loop.
            ended = true;
        }
        if !progress {
            break;
        }
        // Another pass could only read more (still readable after backpressure) or process
        // again: the output went out (or waits for writability) in this one.
        if !c.readable && !c.session.wants_process() {
            break;
        }
    }
    if !ended {
        return true;
    }
    if c.session.wants_abort() {
        return abort(c);
    }
    if c.session.is_finished() {
        c.stream.shutdown_write();
        if c.session.saw_eof()
            || (c.session.input().is_empty() && !has_unread_input(c.stream.as_raw_fd()))
        {
            return false;
        }
        c.linger_until = Some(now + ctx.options.linger);
        // Discard whatever is already there (what a drive of a lingering connection does).
        if c.session.wants_abort() {
            return abort(c);
        }
        return linger(c, scratch);
    }
    true
}

/// The connection failed: a read reported an error (a reset), or a write failed (`EPIPE`,
/// `ECONNRESET`: the peer reset, or is gone). Whatever the peer sent before is still handed
/// to the session, as far as it wants input (Linux's `recv` returns the bytes still queued
/// before it reports the error; after a failed write, they may not even have been read
/// yet), and processed; nothing is written any more. Returns `false`: close now (the
/// session's `close` follows; it hears no `on_eof`, so a reset never passes for a clean end).
#[cold]
#[inline(never)]
fn broken<S: Session>(
    c: &mut Conn<S>,
    ctx: &mut WorkerCtx,
    now: Instant,
    scratch: &mut [u8],
) -> bool {
    let chunk = ctx.options.read_chunk;
    // Bounded as `drive`: each pass reads while the session wants input, then processes.
    let mut open = true;
    for _ in 0..32 {
        while open && c.session.wants_read(ctx) {
            let input = c.session.input();
            let r = if input.capacity() - input.len() < chunk / 4 && c.fresh {
                recv_exact(&c.stream, input, scratch, &mut c.fresh)
            } else {
                recv_into(&c.stream, input, chunk)
            };
            match r {
                Ok((0, _)) => open = false,
                Ok((n, _)) => {
                    c.session.on_read(ctx, n);
                    if c.session.input().len() >= chunk {
                        c.session.process(ctx, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => open = false,
            }
        }
        if c.session.wants_process() {
            c.session.process(ctx, now);
        }
        // Processing may have made room for more input (backpressure lifted).
        if !open || !c.session.wants_read(ctx) {
            break;
        }
    }
    false
}

/// [`IDLE_SWEEP`]: connections that hold no unconsumed input give their buffers back; the
/// next read is a first read again ([`recv_exact`]).
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

/// The first read of a connection: into the worker's `scratch`, then only the bytes read
/// are copied into `input` (a buffer sized to them), and `fresh` is cleared. Later reads go
/// straight into `input` with [`recv_into`] (which reserves a whole read chunk). Returns the
/// byte count and how many were asked for, as `recv_into`.
#[cold]
fn recv_exact(
    s: &Stream,
    input: &mut bytes::BytesMut,
    scratch: &mut [u8],
    fresh: &mut bool,
) -> io::Result<(usize, usize)> {
    // SAFETY: `scratch` is valid writable memory of the length we pass; no address is asked
    // for. The raw system call, as `recv_into`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            s.as_raw_fd(),
            scratch.as_mut_ptr(),
            scratch.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    *fresh = false;
    input.extend_from_slice(&scratch[..n]);
    Ok((n, scratch.len()))
}

/// A lingering connection (our side is done): discard input until the peer's FIN. Returns
/// `false` when it must be closed now.
fn linger<S>(c: &mut Conn<S>, scratch: &mut [u8]) -> bool {
    while c.readable {
        // SAFETY: `scratch` is valid writable memory of the length we pass.
        let n = unsafe {
            libc::recv(
                c.stream.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                0,
            )
        };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => c.readable = false,
                io::ErrorKind::Interrupted => {}
                _ => return false,
            }
        }
    }
    true
}

/// [`Session::wants_abort`]: make the close that follows send an RST (`SO_LINGER {1, 0}`).
/// Returns `false` (close now).
fn abort<S>(c: &mut Conn<S>) -> bool {
    if let Stream::Tcp(_) = c.stream {
        let _ = ferry_driver::driven::linger_zero(c.stream.as_raw_fd());
    }
    false
}

/// Whether a non-blocking connect finished: `Ok(true)` connected, `Ok(false)` still in
/// progress, `Err` failed (as mio documents for Linux: `take_error`, then `peer_addr`).
fn connect_status(s: &Stream) -> io::Result<bool> {
    let Stream::Tcp(s) = s else { return Ok(true) };
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Open a queued outbound connection: socket, non-blocking connect, session. Returns its
/// token, or `None` when the session refused it or the connect failed at once (the session
/// was told and closed).
#[allow(clippy::too_many_arguments)]
fn open_outbound<S: Session>(
    conns: &mut Slab<Conn<S>>,
    poll: &Poll,
    ctx: &mut WorkerCtx,
    shared: &Arc<S::Shared>,
    req: ConnectRequest,
    gen: u32,
    now: Instant,
) -> Option<usize> {
    let entry = conns.vacant_entry();
    let token = entry.key();
    let (mut session, mut stream) =
        open_session::<S, _>(ctx, shared, &req, token, gen, now, TcpStream::connect)?;
    configure_accepted(stream.as_raw_fd(), &ctx.options.listen);
    if let Err(e) = poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        session.connect_failed(ctx, e, now);
        session.close(ctx);
        return None;
    }
    let armed = session.poll_timeout();
    entry.insert(Conn {
        stream: Stream::Tcp(stream),
        session,
        readable: false,
        write_blocked: true,
        write_interest: true,
        armed,
        linger_until: None,
        queued: false,
        read_closed: false,
        connecting: true,
        fresh: true,
    });
    Some(token)
}
