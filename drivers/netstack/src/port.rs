//! A TCP port on the userspace stack: its listening sockets and the Ferry [`Session`]s of its
//! connections.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

use ferry_driver::metrics::add;
use ferry_driver::{ConnInfo, Session, TimerWheel, WorkerCtx};
use ferry_proto::Instant;
use slab::Slab;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::SocketConfig;

const MAX_IOV: usize = 32;

/// One listening TCP port and its connections, as the stack's loop drives it.
///
/// Object-safe so one stack can serve several protocols (HTTP on one port, RESP on another):
/// the loop calls each port once per turn through `dyn Port`, and each port is monomorphised
/// over its protocol inside ([`SessionPort`]), so the per-connection path has no dynamic
/// dispatch.
pub trait Port: Send {
    /// The TCP port number.
    fn port(&self) -> u16;
    /// Open the listening sockets in `sockets`.
    fn open(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig);
    /// Move listening sockets that took a SYN to the accept queue and listen on fresh ones
    /// (called after any frame that may have changed a socket's state).
    fn rearm(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig);
    /// One turn: accept, read, run the protocol, write, fire timers. Returns whether anything
    /// was written into a socket (the stack then polls the interface again).
    fn pump(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig) -> bool;
    /// How long until the port needs [`pump`](Port::pump) again without network input.
    fn wait(&self) -> Option<Duration>;
    /// The doorbell rung by application workers and shutdown (readable = call `wake`).
    fn waker_fd(&self) -> RawFd;
    /// The doorbell rang: drain it.
    fn wake(&mut self);
    /// Shutdown finished: no connection left (or the drain deadline passed).
    fn is_done(&self) -> bool;
}

struct Conn<S> {
    handle: SocketHandle,
    session: S,
    armed: Option<Instant>,
    eof: bool,
    /// In `touched` already this turn.
    queued: bool,
    /// Registered with the socket: pushes this connection's token to the ready list when
    /// smoltcp receives data, frees send space or changes the socket's state.
    waker: Waker,
}

/// A flag raised by a waker.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Tokens of connections whose sockets smoltcp woke (filled during `Interface::poll`).
#[derive(Default)]
struct Ready(Mutex<Vec<usize>>);

struct ConnWaker {
    token: usize,
    ready: Arc<Ready>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut l) = self.ready.0.lock() {
            l.push(self.token);
        }
    }
}

struct Closing {
    handle: SocketHandle,
    deadline: Instant,
    /// Bytes still unsent at the last deadline check (a draining send queue extends it).
    unsent: usize,
}

/// A [`Port`] serving protocol `S` (any Ferry [`Session`]: `HttpSession`, `HttpAuto`,
/// `RespSession`…) with the worker context of one [`Launch`](ferry_driver::Launch).
pub struct SessionPort<S: Session> {
    port: u16,
    ctx: WorkerCtx,
    shared: Arc<S::Shared>,
    listen: Vec<SocketHandle>,
    accepted: Vec<SocketHandle>,
    conns: Slab<Conn<S>>,
    ready: Arc<Ready>,
    /// Set by `listen_waker` when a listening socket changed state.
    listen_woken: Arc<Flag>,
    listen_waker: Waker,
    woken: Vec<usize>,
    touched: Vec<usize>,
    /// Connections whose drive ran out of rounds: driven again next turn.
    again: Vec<usize>,
    closing: Vec<Closing>,
    wheel: TimerWheel,
    expired: Vec<usize>,
    mail: Vec<(usize, S::Mail)>,
    tick_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    any_pending: bool,
    gen: u32,
    done: bool,
}

impl<S: Session> SessionPort<S> {
    /// A port `port` whose sessions run with `ctx` (from a [`Launch`](ferry_driver::Launch),
    /// e.g. [`prepare`](crate::prepare)) and `shared`.
    pub fn new(port: u16, ctx: WorkerCtx, shared: Arc<S::Shared>) -> SessionPort<S> {
        let now = ctx.clock.now();
        let listen_woken = Arc::new(Flag::default());
        SessionPort {
            listen_waker: Waker::from(listen_woken.clone()),
            listen_woken,
            port,
            wheel: TimerWheel::new(now, Duration::from_millis(1)),
            ctx,
            shared,
            listen: Vec::new(),
            accepted: Vec::new(),
            conns: Slab::new(),
            ready: Arc::default(),
            woken: Vec::new(),
            touched: Vec::new(),
            again: Vec::new(),
            closing: Vec::new(),
            expired: Vec::new(),
            mail: Vec::new(),
            tick_at: None,
            drain_deadline: None,
            any_pending: false,
            gen: 0,
            done: false,
        }
    }

    /// Boxed, for [`NetStack::add_port`](crate::NetStack::add_port).
    pub fn boxed(port: u16, ctx: WorkerCtx, shared: Arc<S::Shared>) -> Box<dyn Port> {
        Box::new(SessionPort::<S>::new(port, ctx, shared))
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn listen_socket(&self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig) -> SocketHandle {
        let mut s = cfg.socket();
        // Listening on a port with no specific address cannot fail on a closed socket.
        let _ = s.listen(self.port);
        // Leaving LISTEN (a SYN arrived) wakes this: `rearm` only scans after a wake.
        s.register_recv_waker(&self.listen_waker);
        sockets.add(s)
    }

    fn accept(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig, now: Instant) {
        self.rearm(sockets, cfg);
        for h in std::mem::take(&mut self.accepted) {
            let s = sockets.get_mut::<tcp::Socket>(h);
            let peer = s.remote_endpoint().map(SocketAddr::from);
            if self.conns.len() >= self.ctx.options.max_connections
                || s.state() == tcp::State::Closed
            {
                s.abort();
                self.closing.push(Closing {
                    handle: h,
                    deadline: now,
                    unsent: 0,
                });
                continue;
            }
            let entry = self.conns.vacant_entry();
            let token = entry.key();
            self.gen = self.gen.wrapping_add(1);
            let info = ConnInfo {
                worker: self.ctx.index,
                token,
                peer,
            };
            let Some(session) = S::open(&mut self.ctx, &self.shared, info, self.gen, now) else {
                s.abort();
                self.closing.push(Closing {
                    handle: h,
                    deadline: now,
                    unsent: 0,
                });
                continue;
            };
            let armed = session.poll_timeout();
            if let Some(d) = armed {
                self.wheel.insert(token, d);
            }
            let waker = Waker::from(Arc::new(ConnWaker {
                token,
                ready: self.ready.clone(),
            }));
            entry.insert(Conn {
                handle: h,
                session,
                armed,
                eof: false,
                queued: true,
                waker,
            });
            self.touched.push(token);
        }
    }

    fn begin_drain(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        self.drain_deadline = Some(now.saturating_add(self.ctx.options.drain_timeout));
        for h in self.listen.drain(..).chain(self.accepted.drain(..)) {
            sockets.remove(h);
        }
        for (t, c) in self.conns.iter_mut() {
            c.session.begin_shutdown(&mut self.ctx, now);
            touch(&mut self.touched, t, c);
        }
    }
}

/// Queue `c` (token `t`) to be driven this turn, once.
fn touch<S>(touched: &mut Vec<usize>, t: usize, c: &mut Conn<S>) {
    if !c.queued {
        c.queued = true;
        touched.push(t);
    }
}

/// Rounds of read → process → write per connection and turn.
const DRIVE_ROUNDS: usize = 16;

/// What [`drive`] did.
struct Drive {
    /// The connection lives on (`false`: the session finished or the peer reset it).
    keep: bool,
    /// Bytes went into the socket's send buffer.
    wrote: bool,
    /// The session asked for an abort ([`Session::wants_abort`]): RST instead of FIN.
    abort: bool,
    /// The round budget ran out with work left: drive it again next turn.
    more: bool,
}

/// Move bytes between one connection's socket and its session. Returns `false` when the
/// connection is over (the session finished, or the peer reset it).
fn drive<S: Session>(
    c: &mut Conn<S>,
    s: &mut tcp::Socket<'static>,
    ctx: &mut WorkerCtx,
    now: Instant,
) -> Drive {
    use tcp::State;
    let mut out = Drive {
        keep: true,
        wrote: false,
        abort: false,
        more: false,
    };
    match s.state() {
        // Reset by the peer (or a failed handshake): nothing more can move.
        State::Closed | State::Listen | State::TimeWait => {
            out.keep = false;
            return out;
        }
        _ => {}
    }
    let chunk = ctx.options.read_chunk.max(1);
    for round in 0..DRIVE_ROUNDS {
        let mut progress = false;
        while c.session.wants_read(ctx) && s.can_recv() {
            let input = c.session.input();
            let n = s
                .recv(|buf| {
                    let n = buf.len().min(chunk);
                    input.extend_from_slice(&buf[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            c.session.on_read(ctx, n);
            progress = true;
            if c.session.input().len() >= chunk {
                c.session.process(ctx, now);
            }
        }
        if !c.eof
            && !s.can_recv()
            && matches!(
                s.state(),
                State::CloseWait | State::LastAck | State::Closing | State::TimeWait
            )
            && c.session.wants_read(ctx)
        {
            c.eof = true;
            c.session.on_eof(ctx, now);
            progress = true;
        }
        c.session.process(ctx, now);
        while c.session.has_output() && s.can_send() {
            let mut total = 0;
            {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = c.session.fill_iov(&mut iov);
                for slice in &iov[..n] {
                    let w = s.send_slice(slice).unwrap_or(0);
                    total += w;
                    if w < slice.len() {
                        break;
                    }
                }
            }
            if total == 0 {
                break;
            }
            c.session.written(ctx, total);
            progress = true;
            out.wrote = true;
        }
        if !c.session.has_output() && c.session.poll_shutdown_write() {
            s.close(); // FIN; receiving goes on
        }
        if c.session.is_finished() || c.session.wants_abort() || !progress {
            break;
        }
        // Still moving after the last round: continue next turn (no event will say so).
        out.more = round + 1 == DRIVE_ROUNDS;
    }
    if c.session.wants_abort() {
        out.abort = true;
        out.keep = false;
    } else if c.session.is_finished() {
        out.keep = false;
    }
    out
}

impl<S: Session> Port for SessionPort<S> {
    fn port(&self) -> u16 {
        self.port
    }

    fn open(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig) {
        let now = self.ctx.clock.now();
        self.tick_at = S::tick(&mut self.ctx, &self.shared, now);
        for _ in 0..cfg.backlog.max(1) {
            let h = self.listen_socket(sockets, cfg);
            self.listen.push(h);
        }
    }

    fn rearm(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig) {
        if self.drain_deadline.is_some() || !self.listen_woken.0.swap(false, Ordering::AcqRel) {
            return;
        }
        for i in 0..self.listen.len() {
            let h = self.listen[i];
            if sockets.get::<tcp::Socket>(h).state() != tcp::State::Listen {
                self.accepted.push(h);
                self.listen[i] = self.listen_socket(sockets, cfg);
            }
        }
    }

    fn pump(&mut self, sockets: &mut SocketSet<'static>, cfg: &SocketConfig) -> bool {
        if self.done {
            return false;
        }
        let now = self.ctx.clock.now();
        add(&self.ctx.metrics.loops, 1);
        let mut wrote = false;

        S::take_mail(&mut self.ctx, &self.shared, &mut self.mail);
        for (t, m) in self.mail.drain(..) {
            match self.conns.get_mut(t) {
                Some(c) => {
                    c.session.apply_mail(&mut self.ctx, m, now);
                    touch(&mut self.touched, t, c);
                }
                None => S::drop_mail(&mut self.ctx, &self.shared, m),
            }
        }
        if self.tick_at.is_some_and(|t| now >= t) {
            self.tick_at = S::tick(&mut self.ctx, &self.shared, now);
        }
        if self.any_pending {
            self.any_pending = false;
            for (t, c) in self.conns.iter_mut() {
                if c.session.has_pending() {
                    if !c.session.retry_pending(&mut self.ctx, now) {
                        self.any_pending = true;
                    }
                    touch(&mut self.touched, t, c);
                }
            }
        }
        self.wheel.advance(now, &mut self.expired);
        for t in self.expired.drain(..) {
            if let Some(c) = self.conns.get_mut(t) {
                c.armed = None;
                c.session.on_timeout(&mut self.ctx, now);
                touch(&mut self.touched, t, c);
            }
        }
        if self.drain_deadline.is_none() && self.ctx.shutdown.is_triggered() {
            self.begin_drain(sockets, now);
        }
        if self.drain_deadline.is_none() {
            self.accept(sockets, cfg, now);
        }

        if let Ok(mut l) = self.ready.0.lock() {
            std::mem::swap(&mut *l, &mut self.woken);
        }
        for t in self.woken.drain(..).chain(std::mem::take(&mut self.again)) {
            if let Some(c) = self.conns.get_mut(t) {
                touch(&mut self.touched, t, c);
            }
        }
        let mut gone = Vec::new();
        for t in self.touched.drain(..) {
            let Some(c) = self.conns.get_mut(t) else {
                continue;
            };
            c.queued = false;
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            let d = drive(c, s, &mut self.ctx, now);
            wrote |= d.wrote;
            if !d.keep {
                gone.push((t, d.abort));
                continue;
            }
            if d.more {
                self.again.push(t);
            }
            // One-shot registrations: armed again after every drive.
            s.register_recv_waker(&c.waker);
            s.register_send_waker(&c.waker);
            self.any_pending |= c.session.has_pending();
            if let Some(d) = c.session.poll_timeout() {
                if c.armed.is_none_or(|a| d < a) {
                    self.wheel.insert(t, d);
                    c.armed = Some(d);
                }
            }
        }
        let mut aborted = Vec::new();
        for (t, abort) in gone {
            let c = self.conns.remove(t);
            self.wheel.cancel(t);
            c.session.close(&mut self.ctx);
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            if abort {
                // RST now (the session asked); freed on a later turn, after the RST went out.
                s.abort();
                aborted.push(c.handle);
                continue;
            }
            // FIN after the queued bytes; lingering reads are discarded below.
            s.close();
            self.closing.push(Closing {
                handle: c.handle,
                deadline: now.saturating_add(self.ctx.options.linger),
                unsent: usize::MAX,
            });
        }

        // Closing sockets: discard input, let the FIN go out, free when done or overdue.
        let mut i = 0;
        while i < self.closing.len() {
            let cl = &self.closing[i];
            let s = sockets.get_mut::<tcp::Socket>(cl.handle);
            while s.can_recv() {
                if s.recv(|b| (b.len(), ())).is_err() {
                    break;
                }
            }
            let finished = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if !finished && now >= cl.deadline && s.send_queue() > 0 && s.send_queue() < cl.unsent {
                // The peer is still taking the last response: give it another `linger`.
                let unsent = s.send_queue();
                let cl = &mut self.closing[i];
                cl.unsent = unsent;
                cl.deadline = now.saturating_add(self.ctx.options.linger);
                i += 1;
                continue;
            }
            if finished || now >= cl.deadline {
                if !finished {
                    // Overdue: reset, and free the socket on the next turn (after the RST went).
                    s.abort();
                    self.closing[i].deadline = now;
                    i += 1;
                    continue;
                }
                sockets.remove(cl.handle);
                self.closing.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.closing
            .extend(aborted.into_iter().map(|handle| Closing {
                handle,
                deadline: now,
                unsent: usize::MAX,
            }));

        if let Some(d) = self.drain_deadline {
            if self.conns.is_empty() || now >= d {
                for c in self.conns.drain() {
                    let s = sockets.get_mut::<tcp::Socket>(c.handle);
                    s.abort();
                    c.session.close(&mut self.ctx);
                    self.closing.push(Closing {
                        handle: c.handle,
                        deadline: now,
                        unsent: 0,
                    });
                }
                if self.closing.is_empty() || now >= d {
                    self.done = true;
                }
            }
        }
        wrote
    }

    fn wait(&self) -> Option<Duration> {
        if self.done {
            return None;
        }
        let mut deadline = self.wheel.next_expiration();
        for d in [self.tick_at, self.drain_deadline]
            .into_iter()
            .flatten()
            .chain(self.closing.iter().map(|c| c.deadline))
        {
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        let mut wait = deadline.map(|d| self.ctx.clock.until(d));
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        if self.any_pending || self.drain_deadline.is_some() {
            // An application channel was full, or draining: look again soon.
            wait = Some(wait.map_or(Duration::from_millis(1), |w| {
                w.min(Duration::from_millis(1))
            }));
        }
        wait
    }

    fn waker_fd(&self) -> RawFd {
        self.ctx.waker.as_raw_fd()
    }

    fn wake(&mut self) {
        self.ctx.waker.drain();
    }

    fn is_done(&self) -> bool {
        self.done
    }
}
