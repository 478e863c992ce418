//! The relay on a Ferry driver: one [`RelayConn`] session per socket, `Down` for the accepted
//! client connection and `Up` for the outbound connection it opens with
//! [`WorkerCtx::connect`]. Both halves live on the same I/O worker and talk through
//! [`WorkerCtx::post`]. The `Down` half owns both [`Pipe`]s (all fault logic in one place);
//! `Up` only moves bytes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ferry_driver::relay::{Downstream, Half, Io, Peer, Upstream};
use ferry_driver::{
    Launch, ListenAddr, Request, Response, ServerHandle, ServerOptions, Service, WorkerCtx,
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
type Pending = (Peer, Arc<Flow>);

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
pub enum Mail {
    /// `Up` connected: its address.
    Hello(Peer),
    /// Bytes for the other side.
    Data(Bytes),
    /// The other side's peer closed its sending side.
    Eof,
    /// The other side is gone.
    Close,
    /// Room again: read on.
    Resume,
}

/// What both halves of a relayed connection keep.
struct Common {
    io: Io,
    shared: Arc<RelayShared>,
    flow: Arc<Flow>,
    /// The other half, once known.
    peer: Option<Peer>,
    last_now: Instant,
    close_sent: bool,
    peer_closed: bool,
    finished: bool,
}

impl Common {
    fn new(io: Io, shared: &Arc<RelayShared>, flow: Arc<Flow>, now: Instant) -> Common {
        Common {
            io,
            shared: shared.clone(),
            flow,
            peer: None,
            last_now: now,
            close_sent: false,
            peer_closed: false,
            finished: false,
        }
    }

    fn post(&self, ctx: &WorkerCtx, m: Mail) {
        if let Some(p) = self.peer {
            let _ = p.post(ctx, m);
        }
    }

    fn send_close(&mut self, ctx: &WorkerCtx) {
        if !self.close_sent {
            self.close_sent = true;
            self.post(ctx, Mail::Close);
        }
    }

    /// `n` bytes of ours went out: `inflight` drops, and the peer reads on below half the
    /// high-water mark if it had stopped (`blocked`).
    fn on_written(&self, ctx: &WorkerCtx, inflight: &AtomicUsize, blocked: &AtomicBool, n: usize) {
        let left = sub(inflight, n);
        resume_peer(self, ctx, blocked, left);
    }

    /// Whether to read, given the bytes of ours in flight (sets `blocked` when not).
    fn may_read(&self, inflight: &AtomicUsize, blocked: &AtomicBool) -> bool {
        if self.finished {
            return false;
        }
        if inflight.load(Ordering::Relaxed) >= HIGH_WATER {
            blocked.store(true, Ordering::Release);
            return false;
        }
        true
    }
}

fn resume_peer(c: &Common, ctx: &WorkerCtx, blocked: &AtomicBool, left: usize) {
    if left < HIGH_WATER / 2 && blocked.swap(false, Ordering::AcqRel) {
        c.post(ctx, Mail::Resume);
    }
}

/// The client's connection: owns both directions' [`Pipe`]s (all fault logic in one place).
pub struct Down {
    c: Common,
    faults: Faults,
    version: u64,
    /// Client → upstream and upstream → client schedules.
    c2s: Pipe,
    s2c: Pipe,
    reset: Option<ResetFault>,
    s2c_eof_pushed: bool,
    /// No more input will come for our socket's output: finish once it is flushed.
    drain_then_finish: bool,
    rst_pending: bool,
    releases: Vec<Release>,
}

/// The connection to the upstream: only moves bytes.
pub struct Up {
    c: Common,
    /// The client side is done: finish once our output is flushed.
    drain: bool,
}

impl Down {
    fn refresh(&mut self) {
        let v = self.c.shared.version.load(Ordering::Acquire);
        if v != self.version {
            self.faults = self.c.shared.lock_faults().clone();
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

    /// Push what the client sent into the client → upstream pipe.
    fn take_input(&mut self, now: Instant) {
        if self.c.io.input.is_empty() {
            return;
        }
        let data = self.c.io.input.split().freeze();
        let pf = self.pipe_faults(Dir::ToUpstream, now);
        let before = self.c2s.dropped();
        self.c2s.push(now, &pf, data);
        let dropped = (self.c2s.dropped() - before) as usize;
        if dropped > 0 {
            sub(&self.c.flow.c2s, dropped);
            self.c
                .shared
                .counters
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Release what is due in both directions.
    fn pump(&mut self, ctx: &WorkerCtx, now: Instant) {
        self.c.last_now = now;
        if self.c.finished {
            return;
        }
        self.refresh();
        // Client → upstream: only once the upstream half is connected.
        if self.c.peer.is_some() && !self.c.peer_closed {
            let pf = self.pipe_faults(Dir::ToUpstream, now);
            let mut rel = std::mem::take(&mut self.releases);
            self.c2s.pop_due(now, &pf, &mut rel);
            for r in rel.drain(..) {
                match r {
                    Release::Data(b) => {
                        self.c
                            .shared
                            .counters
                            .to_up
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        self.c.post(ctx, Mail::Data(b));
                    }
                    Release::Eof => self.c.post(ctx, Mail::Eof),
                    Release::Reset => self.rst_pending = true,
                }
            }
            self.releases = rel;
        }
        if self.c.io.saw_eof()
            && (self.c.peer_closed || self.faults.half_open == Some(Dir::ToUpstream))
        {
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
                    self.c
                        .shared
                        .counters
                        .to_down
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    self.c.io.out.push(b);
                }
                Release::Eof => self.drain_then_finish = true,
                Release::Reset => self.rst_pending = true,
            }
        }
        self.releases = rel;
        self.maybe_finish(ctx);
    }

    fn maybe_finish(&mut self, ctx: &WorkerCtx) {
        if self.c.finished || !self.c.io.out.is_empty() {
            return;
        }
        if self.rst_pending {
            self.do_reset(ctx);
        } else if self.drain_then_finish {
            self.c.finished = true;
        }
    }

    /// RST the client connection now (the driver closes it under `SO_LINGER {1, 0}`, see
    /// [`Io::abort`]), and close the upstream half.
    fn do_reset(&mut self, ctx: &WorkerCtx) {
        self.c.finished = true;
        self.c.io.abort();
        self.c2s.clear();
        self.s2c.clear();
        self.c
            .shared
            .counters
            .resets
            .fetch_add(1, Ordering::Relaxed);
        self.c.send_close(ctx);
    }
}

impl Half for Down {
    type Shared = RelayShared;
    type Mail = Mail;

    fn io(&self) -> &Io {
        &self.c.io
    }

    fn io_mut(&mut self) -> &mut Io {
        &mut self.c.io
    }

    fn shared(&self) -> &Arc<RelayShared> {
        &self.c.shared
    }

    fn wants_read(&self, _ctx: &WorkerCtx) -> bool {
        !self.rst_pending && self.c.may_read(&self.c.flow.c2s, &self.c.flow.down_blocked)
    }

    fn is_finished(&self) -> bool {
        self.c.finished
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.c.finished {
            return None;
        }
        let now = self.c.last_now;
        if self.rst_pending && self.c.io.out.is_empty() {
            return Some(now);
        }
        let mut next: Option<Instant> = None;
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
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        next
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.c.last_now = now;
        self.take_input(now);
        self.pump(ctx, now);
    }

    fn on_read(&mut self, _ctx: &WorkerCtx, n: usize) {
        self.c.flow.c2s.fetch_add(n, Ordering::Relaxed);
    }

    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        self.c
            .on_written(ctx, &self.c.flow.s2c, &self.c.flow.up_blocked, n);
        if self.c.io.out.is_empty() {
            self.maybe_finish(ctx);
        }
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.take_input(now);
        let pf = self.pipe_faults(Dir::ToUpstream, now);
        self.c2s.push_eof(now, &pf);
        if self.c.peer.is_none() && !self.rst_pending {
            // No upstream yet (or never): nothing to wait for.
            self.drain_then_finish = self.c.peer_closed || self.faults.half_open.is_none();
        }
        self.pump(ctx, now);
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.pump(ctx, now);
        self.maybe_finish(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.c.finished = true;
        self.c.send_close(ctx);
    }

    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        self.c.last_now = now;
        match mail {
            Mail::Hello(up) => {
                self.c.peer = Some(up);
                if self.c.finished || self.c.close_sent {
                    // We gave up before the upstream half existed (a `Close` posted then went
                    // nowhere): tell it now.
                    self.c.close_sent = false;
                    self.c.send_close(ctx);
                }
                self.pump(ctx, now);
            }
            Mail::Data(b) => {
                self.refresh();
                let pf = self.pipe_faults(Dir::ToDownstream, now);
                let before = self.s2c.dropped();
                let len = b.len();
                self.s2c.push(now, &pf, b);
                let dropped = (self.s2c.dropped() - before) as usize;
                if dropped > 0 || self.c.finished {
                    let flow = &self.c.flow;
                    let left = sub(&flow.s2c, if self.c.finished { len } else { dropped });
                    self.c
                        .shared
                        .counters
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    resume_peer(&self.c, ctx, &flow.up_blocked, left);
                }
                self.pump(ctx, now);
            }
            Mail::Eof | Mail::Close => {
                self.c.peer_closed = true;
                if !self.s2c_eof_pushed {
                    self.s2c_eof_pushed = true;
                    self.refresh();
                    let pf = self.pipe_faults(Dir::ToDownstream, now);
                    self.s2c.push_eof(now, &pf);
                }
                self.pump(ctx, now);
            }
            Mail::Resume => {}
        }
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        self.c.flow.down_closed.store(true, Ordering::Release);
        self.c
            .shared
            .counters
            .active
            .fetch_sub(1, Ordering::Relaxed);
        self.c.send_close(ctx);
    }
}

impl Downstream for Down {
    fn open(ctx: &mut WorkerCtx, shared: &Arc<RelayShared>, io: Io, now: Instant) -> Option<Self> {
        let c = &shared.counters;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        let n = shared.conns.fetch_add(1, Ordering::Relaxed);
        let (faults, version) = {
            let f = shared.lock_faults();
            (f.clone(), shared.version.load(Ordering::Acquire))
        };
        if faults.refuse {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        c.active.fetch_add(1, Ordering::Relaxed);
        let seed = faults.seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let flow = Arc::new(Flow::default());
        let me = io.me();
        let mut s = Down {
            c: Common::new(io, shared, flow.clone(), now),
            reset: faults.resets_connection(n),
            faults,
            version,
            c2s: Pipe::new(seed),
            s2c: Pipe::new(seed ^ 0x5555_5555_5555_5555),
            s2c_eof_pushed: false,
            drain_then_finish: false,
            rst_pending: false,
            releases: Vec::new(),
        };
        if s.reset.is_some_and(|r| r.after_bytes == 0) {
            s.rst_pending = true;
            return Some(s);
        }
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n, (me, flow));
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

    fn drop_mail(ctx: &mut WorkerCtx, _shared: &RelayShared, mail: Mail) {
        // An upstream half introduced itself to a client half that is gone: close it.
        if let Mail::Hello(up) = mail {
            let _ = up.post(ctx, Mail::Close);
        }
    }
}

impl Half for Up {
    type Shared = RelayShared;
    type Mail = Mail;

    fn io(&self) -> &Io {
        &self.c.io
    }

    fn io_mut(&mut self) -> &mut Io {
        &mut self.c.io
    }

    fn shared(&self) -> &Arc<RelayShared> {
        &self.c.shared
    }

    fn wants_read(&self, _ctx: &WorkerCtx) -> bool {
        self.c.may_read(&self.c.flow.s2c, &self.c.flow.up_blocked)
    }

    fn is_finished(&self) -> bool {
        self.c.finished
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.c.last_now = now;
        if !self.c.io.input.is_empty() && !self.c.finished && !self.c.close_sent {
            let data = self.c.io.input.split().freeze();
            self.c.post(ctx, Mail::Data(data));
        }
    }

    fn on_read(&mut self, _ctx: &WorkerCtx, n: usize) {
        self.c.flow.s2c.fetch_add(n, Ordering::Relaxed);
    }

    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        self.c
            .on_written(ctx, &self.c.flow.c2s, &self.c.flow.down_blocked, n);
        if self.drain && self.c.io.out.is_empty() {
            self.c.finished = true;
        }
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        if !self.c.io.input.is_empty() {
            let data = self.c.io.input.split().freeze();
            self.c.post(ctx, Mail::Data(data));
        }
        self.c.post(ctx, Mail::Eof);
        self.c.finished = true;
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.c.finished = true;
        self.c.send_close(ctx);
    }

    fn on_mail(&mut self, _ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        self.c.last_now = now;
        match mail {
            Mail::Data(b) => {
                if !self.c.finished {
                    self.c.io.out.push(b);
                }
            }
            kind @ (Mail::Eof | Mail::Close) => {
                self.c.peer_closed = true;
                if matches!(kind, Mail::Close) {
                    self.c.close_sent = true; // the client half is gone: nothing to tell it
                }
                // Finish once what is queued went out.
                self.drain = true;
                if self.c.io.out.is_empty() {
                    self.c.finished = true;
                }
            }
            Mail::Resume | Mail::Hello(_) => {}
        }
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        self.c.send_close(ctx);
    }
}

impl Upstream for Up {
    fn open(
        _ctx: &mut WorkerCtx,
        shared: &Arc<RelayShared>,
        mut io: Io,
        tag: u64,
        now: Instant,
    ) -> Option<Self> {
        let (down, flow) = shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag)?;
        io.set_connect_deadline(Some(now + CONNECT_TIMEOUT));
        let mut c = Common::new(io, shared, flow, now);
        c.peer = Some(down);
        Some(Up { c, drain: false })
    }

    fn on_connected(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.c.last_now = now;
        if self.c.flow.down_closed.load(Ordering::Acquire) {
            self.c.finished = true;
            return;
        }
        self.c.post(ctx, Mail::Hello(self.c.io.me()));
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, _error: io::Error, _now: Instant) {
        self.c
            .shared
            .counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.c.finished = true;
        self.c.send_close(ctx);
    }
}

/// The relay's session: a [`Down`] per client, an [`Up`] per upstream connection.
pub type RelayConn = ferry_driver::relay::Relay<Down, Up>;

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
