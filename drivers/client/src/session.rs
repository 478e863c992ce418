//! The I/O worker's side: one [`Session`] per outbound connection, and per worker a
//! `ferry-pool` of keep-alive connections per destination.
//!
//! Requests arrive in the worker's inbox (a bounded channel, the doorbell rung by the
//! sender); [`Session::take_mail`] drains it once per loop turn and checks each request out of
//! the pool: a warm idle connection gets it as worker-local mail, otherwise a connect is
//! queued ([`WorkerCtx::connect`]) and the request rides along in the ticket, or it waits for
//! a connection to come free. The session sends it, collects the response (bounded by the
//! HTTP/1.1 limits), completes the caller's handle and gives the connection back to the pool,
//! reusable only when HTTP/1.1 allows it (`Connection: close`, HTTP/1.0, close-delimited
//! bodies and errors are not reused).

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use ferry_driver::{compat, ConnInfo, OutQueue, Session, WorkerCtx};
use ferry_http1::client::Event;
use ferry_http1::{Body, ClientConnection, SendError};
use ferry_pool::{Checkout, Event as PoolEvent, Pool, WaiterId};
use ferry_proto::{Connection, Instant};
use slab::Slab;

use crate::request::{Job, Target};
use crate::Error;

/// Counters, shared by every worker of a client.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub requests: AtomicU64,
    pub reused: AtomicU64,
    pub retries: AtomicU64,
}

/// What every worker of a client shares.
pub(crate) struct Shared {
    /// One inbox per worker.
    pub inbox: Vec<Receiver<Job>>,
    /// One state per worker, locked only by that worker's thread.
    pub workers: Vec<Mutex<Worker>>,
    pub h1: Arc<ferry_http1::ClientConfig>,
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
    pub counters: Counters,
}

impl Shared {
    fn worker(&self, i: usize) -> MutexGuard<'_, Worker> {
        self.workers[i % self.workers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool's handle on a connection.
#[derive(Debug)]
pub(crate) struct Handle {
    key: SocketAddr,
    token: usize,
    gen: u32,
    alive: Arc<AtomicBool>,
    /// Counted in the worker's idle count.
    idle: bool,
}

type Lease = ferry_pool::Lease<SocketAddr, Handle>;
type Ticket = ferry_pool::Ticket<SocketAddr>;

/// One worker's pool and the requests waiting on it.
pub(crate) struct Worker {
    pool: Pool<SocketAddr, Handle>,
    /// Connects in flight (the tag is the key): the pool's ticket and the request that asked
    /// for it (none when the pool asked for the connection itself, for its waiters).
    tickets: Slab<(Ticket, Option<Job>)>,
    waiters: Vec<(WaiterId, Job)>,
    /// Idle connections per destination (kept at most `max_idle_per_host`).
    idle: HashMap<SocketAddr, usize>,
    /// The last connect failure per destination, what queued requests fail with.
    last_error: HashMap<SocketAddr, Error>,
}

impl Worker {
    pub(crate) fn new(config: ferry_pool::Config) -> Worker {
        Worker {
            pool: Pool::new(config).with_validator(|h: &Handle| h.alive.load(Relaxed)),
            tickets: Slab::new(),
            waiters: Vec::new(),
            idle: HashMap::new(),
            last_error: HashMap::new(),
        }
    }

    fn take_idle(&mut self, lease: &mut Lease) {
        if std::mem::take(&mut lease.conn_mut().idle) {
            if let Some(n) = self.idle.get_mut(lease.key()) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn send_start(&mut self, ctx: &WorkerCtx, job: Job, mut lease: Lease, now: Instant) {
        self.take_idle(&mut lease);
        let (t, gen) = (lease.conn().token, lease.conn().gen);
        if let Err(Mail::Start { job, lease, .. }) = ctx.post(t, Mail::Start { gen, job, lease }) {
            let _ = self.pool.checkin(lease, false, now);
            job.fail(Error::Closed);
        }
    }

    /// Route one request: a warm connection, a new one, or a wait.
    fn dispatch(&mut self, ctx: &WorkerCtx, sh: &Shared, job: Job, now: Instant) {
        let Some(addr) = job.addr() else {
            job.fail(Error::Resolve("not resolved".into()));
            return;
        };
        if ctx.shutdown.is_triggered() {
            job.fail(Error::Closed);
            return;
        }
        if job.deadline.is_some_and(|d| now >= d) {
            job.fail(Error::Timeout);
            return;
        }
        match self.pool.checkout(addr, now) {
            Ok(Checkout::Ready(lease)) => {
                sh.counters.reused.fetch_add(1, Relaxed);
                self.send_start(ctx, job, lease, now);
            }
            Ok(Checkout::Connect(ticket)) => self.connect(ctx, sh, ticket, Some(job), now),
            Ok(Checkout::Queued(w)) => self.waiters.push((w, job)),
            Ok(_) | Err(_) => job.fail(Error::Busy),
        }
        self.pump(ctx, sh, now);
    }

    fn connect(
        &mut self,
        ctx: &WorkerCtx,
        sh: &Shared,
        ticket: Ticket,
        job: Option<Job>,
        now: Instant,
    ) {
        let addr = *ticket.key();
        let slot = self.tickets.insert((ticket, job));
        sh.counters.connects.fetch_add(1, Relaxed);
        if !ctx.connect(addr, slot as u64) {
            let (t, job) = self.tickets.remove(slot);
            let _ = self.pool.connect_failed(t, now);
            if let Some(j) = job {
                j.fail(Error::Closed);
            }
        }
    }

    /// A connect ended without a connection: tell the pool, fail the request that asked,
    /// or try the name's next address.
    fn connect_failed(
        &mut self,
        ctx: &WorkerCtx,
        sh: &Shared,
        slot: usize,
        error: Error,
        now: Instant,
    ) {
        if let Some((ticket, job)) = self.tickets.try_remove(slot) {
            self.last_error.insert(*ticket.key(), error.clone());
            let _ = self.pool.connect_failed(ticket, now);
            match job {
                Some(mut j) if !j.fallback.is_empty() && error != Error::Closed => {
                    j.dest = Target::Addr(j.fallback.remove(0));
                    self.dispatch(ctx, sh, j, now);
                }
                Some(j) => j.fail(error),
                None => {}
            }
        }
        self.pump(ctx, sh, now);
    }

    fn take_waiter(&mut self, w: WaiterId) -> Option<Job> {
        let p = self.waiters.iter().position(|(id, _)| *id == w)?;
        Some(self.waiters.swap_remove(p).1)
    }

    /// Act on what the pool asks for.
    fn pump(&mut self, ctx: &WorkerCtx, sh: &Shared, now: Instant) {
        while let Some(ev) = self.pool.poll_event() {
            match ev {
                PoolEvent::Connect(ticket) => self.connect(ctx, sh, ticket, None, now),
                PoolEvent::Ready { waiter, lease } => match self.take_waiter(waiter) {
                    Some(job) => self.send_start(ctx, job, lease, now),
                    None => {
                        let _ = self.pool.checkin(lease, true, now);
                    }
                },
                PoolEvent::TimedOut { waiter } => {
                    if let Some(job) = self.take_waiter(waiter) {
                        job.fail(Error::Timeout);
                    }
                }
                PoolEvent::Failed { waiter } => {
                    if let Some(job) = self.take_waiter(waiter) {
                        let e = job
                            .addr()
                            .and_then(|a| self.last_error.get(&a).cloned())
                            .unwrap_or(Error::Connect(io::ErrorKind::Other));
                        job.fail(e);
                    }
                }
                PoolEvent::HealthCheck(lease) => {
                    let ok = lease.conn().alive.load(Relaxed);
                    let _ = self.pool.checkin(lease, ok, now);
                }
                PoolEvent::Close(h) => {
                    if h.idle {
                        if let Some(n) = self.idle.get_mut(&h.key) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    h.alive.store(false, Relaxed);
                    let _ = ctx.post(h.token, Mail::Close { gen: h.gen });
                }
                _ => {}
            }
        }
    }

    /// Give a connection back after an exchange.
    fn checkin(
        &mut self,
        ctx: &WorkerCtx,
        sh: &Shared,
        mut lease: Lease,
        reusable: bool,
        now: Instant,
    ) {
        let key = *lease.key();
        let idle = self.idle.get(&key).copied().unwrap_or(0);
        let keep = reusable
            && lease.conn().alive.load(Relaxed)
            && !ctx.shutdown.is_triggered()
            && idle < sh.max_idle_per_host;
        if keep {
            lease.conn_mut().idle = true;
            *self.idle.entry(key).or_default() += 1;
        }
        let _ = self.pool.checkin(lease, keep, now);
        self.pump(ctx, sh, now);
    }

    /// Timers: the pool's (idle timeout, waiting too long) and the waiting requests' own
    /// deadlines. Returns when to look again.
    fn tick(&mut self, ctx: &WorkerCtx, sh: &Shared, now: Instant) -> Instant {
        self.pool.handle_timeout(now);
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].1.deadline.is_some_and(|d| now >= d) {
                let (w, job) = self.waiters.swap_remove(i);
                self.pool.cancel(w);
                job.fail(Error::Timeout);
            } else {
                i += 1;
            }
        }
        self.pump(ctx, sh, now);
        let busy = self.pool.total_load() > 0 || !self.waiters.is_empty();
        let period = if busy {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        };
        let next = now + period;
        self.pool
            .poll_timeout()
            .map_or(next, |t| t.max(now).min(next))
    }
}

/// Mail for a connection of the worker. (Moved a few times per request through one reused
/// queue; boxing `Start` would cost an allocation per request instead.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Mail {
    /// Send this request on this (idle, leased) connection.
    Start { gen: u32, job: Job, lease: Lease },
    /// The pool is done with this idle connection.
    Close { gen: u32 },
}

/// A request on a connection and what came back so far.
struct Exchange {
    job: Job,
    head: Option<ferry_http1::Response>,
    body: Vec<Bytes>,
}

/// One outbound HTTP/1.1 connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    worker: usize,
    token: usize,
    gen: u32,
    conn: ClientConnection,
    input: BytesMut,
    out: OutQueue,
    alive: Arc<AtomicBool>,
    /// While connecting: the deadline and the ticket's slot in the worker state.
    connecting: Option<(Instant, usize)>,
    ex: Option<Exchange>,
    lease: Option<Lease>,
    finished: bool,
    eof: bool,
}

fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                b.extend_from_slice(&p);
            }
            b.freeze()
        }
    }
}

impl Conn {
    fn flush(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }

    fn redispatch(&self, ctx: &WorkerCtx, job: Job, now: Instant) {
        let sh = &*self.shared;
        sh.worker(self.worker).dispatch(ctx, sh, job, now);
    }

    fn give_back(&mut self, ctx: &WorkerCtx, reusable: bool, now: Instant) {
        if let Some(lease) = self.lease.take() {
            let sh = &*self.shared;
            sh.worker(self.worker)
                .checkin(ctx, sh, lease, reusable, now);
        }
    }

    fn start(&mut self, ctx: &WorkerCtx, job: Job, lease: Lease, now: Instant) {
        self.lease = Some(lease);
        let fields = compat::request_fields(&job.headers);
        let body = if job.body.is_empty() {
            Body::Empty
        } else {
            Body::Full(job.body.clone())
        };
        let sent = self.conn.send_request_with_method_str(
            now,
            job.method.as_str(),
            &job.target,
            &fields,
            body,
        );
        drop(fields);
        match sent {
            Ok(_) => {
                self.shared.counters.requests.fetch_add(1, Relaxed);
                self.ex = Some(Exchange {
                    job,
                    head: None,
                    body: Vec::new(),
                });
                self.flush();
            }
            Err(SendError::InvalidHeader | SendError::FramingHeader) => {
                job.fail(Error::InvalidRequest(
                    "a field or the target cannot be sent",
                ));
                self.give_back(ctx, true, now);
            }
            Err(_) => {
                // Not usable after all (closed under us): another connection takes it.
                self.give_back(ctx, false, now);
                self.finished = true;
                self.redispatch(ctx, job, now);
            }
        }
    }

    fn events(&mut self, ctx: &WorkerCtx, now: Instant) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Response(r) => {
                    if let Some(ex) = self.ex.as_mut() {
                        ex.head = Some(r);
                    }
                }
                Event::Data { data, .. } => {
                    if let Some(ex) = self.ex.as_mut() {
                        ex.body.push(data);
                    }
                }
                Event::End { .. } | Event::Upgraded { .. } => self.complete(ctx, now),
                Event::Error { error, .. } => {
                    let retry = error == ferry_http1::Error::UnexpectedEof;
                    self.fail(ctx, Error::Protocol(error), retry, now);
                }
                _ => {}
            }
        }
    }

    fn complete(&mut self, ctx: &WorkerCtx, now: Instant) {
        let Some(ex) = self.ex.take() else { return };
        let Some(head) = ex.head else {
            ex.job
                .fail(Error::Protocol(ferry_http1::Error::UnexpectedEof));
            return;
        };
        let body = concat(ex.body);
        match compat::response_to_http(&head, body) {
            Some(r) => ex.job.done.complete(Ok(r)),
            None => ex.job.fail(Error::Protocol(ferry_http1::Error::InvalidHead(
                ferry_http1::HeadError::Status,
            ))),
        }
        let reusable = self.conn.is_reusable() && !self.eof && !self.finished;
        if !reusable {
            self.conn.close();
            self.finished = true;
            self.alive.store(false, Relaxed);
        }
        self.give_back(ctx, reusable, now);
    }

    /// The exchange (if any) failed and the connection is done. A request that got no
    /// response byte on a reused connection (the server closed an idle keep-alive under it)
    /// goes out again once, on another connection, when its method is idempotent.
    fn fail(&mut self, ctx: &WorkerCtx, e: Error, retriable: bool, now: Instant) {
        self.finished = true;
        self.alive.store(false, Relaxed);
        let reused = self.lease.as_ref().is_some_and(|l| l.uses() > 1);
        let ex = self.ex.take();
        self.give_back(ctx, false, now);
        if let Some(mut ex) = ex {
            if retriable && reused && ex.head.is_none() && ex.job.retriable() {
                ex.job.retried = true;
                self.shared.counters.retries.fetch_add(1, Relaxed);
                self.redispatch(ctx, ex.job, now);
            } else {
                ex.job.fail(e);
            }
        }
    }
}

impl Session for Conn {
    type Shared = Shared;
    type Mail = Mail;

    fn open(
        _ctx: &mut WorkerCtx,
        _shared: &Arc<Shared>,
        _info: ConnInfo,
        _gen: u32,
        _now: Instant,
    ) -> Option<Self> {
        None // a client accepts nothing
    }

    fn open_outbound(
        ctx: &mut WorkerCtx,
        shared: &Arc<Shared>,
        info: ConnInfo,
        tag: u64,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let slot = tag as usize;
        if !shared.worker(ctx.index).tickets.contains(slot) {
            return None;
        }
        Some(Conn {
            shared: shared.clone(),
            worker: ctx.index,
            token: info.token,
            gen,
            conn: ClientConnection::new(shared.h1.clone(), now),
            input: BytesMut::new(),
            out: OutQueue::default(),
            alive: Arc::new(AtomicBool::new(true)),
            connecting: Some((now + shared.connect_timeout, slot)),
            ex: None,
            lease: None,
            finished: false,
            eof: false,
        })
    }

    fn on_connected(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let Some((_, slot)) = self.connecting.take() else {
            return;
        };
        let sh = self.shared.clone();
        let mut w = sh.worker(self.worker);
        let Some((ticket, job)) = w.tickets.try_remove(slot) else {
            self.finished = true;
            return;
        };
        let handle = Handle {
            key: *ticket.key(),
            token: self.token,
            gen: self.gen,
            alive: self.alive.clone(),
            idle: false,
        };
        // The connection is the client's own now: a fresh `ClientConnection` at this time.
        self.conn = ClientConnection::new(sh.h1.clone(), now);
        match w.pool.connected(ticket, handle, now) {
            Ok(Some(lease)) => {
                drop(w);
                match job {
                    Some(job) => self.start(ctx, job, lease, now),
                    None => {
                        self.lease = Some(lease);
                        self.give_back(ctx, true, now);
                    }
                }
            }
            Ok(None) => {
                // The pool hands it to a waiter (mail to us) or keeps it idle.
                if let Some(j) = job {
                    w.dispatch(ctx, &sh, j, now);
                }
                w.pump(ctx, &sh, now);
            }
            Err(_) => {
                self.finished = true;
                if let Some(j) = job {
                    j.fail(Error::Closed);
                }
                w.pump(ctx, &sh, now);
            }
        }
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: io::Error, now: Instant) {
        self.finished = true;
        self.alive.store(false, Relaxed);
        if let Some((_, slot)) = self.connecting.take() {
            let sh = self.shared.clone();
            sh.counters.connect_failures.fetch_add(1, Relaxed);
            let mut w = sh.worker(self.worker);
            w.connect_failed(ctx, &sh, slot, Error::Connect(error.kind()), now);
        }
    }

    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }
    fn wants_read(&self, _ctx: &WorkerCtx) -> bool {
        !self.finished && self.conn.wants_read()
    }
    fn is_finished(&self) -> bool {
        self.finished || (self.conn.is_closed() && self.out.is_empty())
    }
    fn saw_eof(&self) -> bool {
        self.eof
    }
    fn has_pending(&self) -> bool {
        false
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let a = self.connecting.map(|(d, _)| d);
        let b = self.ex.as_ref().and_then(|e| e.job.deadline);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.fill_iov(iov)
    }
    fn written(&mut self, _ctx: &WorkerCtx, n: usize) {
        self.out.written(n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.out.take_out(max, into)
    }
    fn sent(&mut self, _ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        self.out.sent(n, chunks)
    }
    fn on_read(&mut self, _ctx: &WorkerCtx, _n: usize) {}

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.eof = true;
        self.alive.store(false, Relaxed);
        let _ = self.conn.handle_input(now, &mut self.input);
        self.conn.handle_eof(now);
        self.events(ctx, now);
        if self.ex.is_none() {
            self.finished = true;
        }
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Some((deadline, slot)) = self.connecting {
            if now >= deadline {
                self.connecting = None;
                self.finished = true;
                self.alive.store(false, Relaxed);
                let sh = self.shared.clone();
                sh.counters.connect_failures.fetch_add(1, Relaxed);
                let mut w = sh.worker(self.worker);
                w.connect_failed(ctx, &sh, slot, Error::ConnectTimeout, now);
                return;
            }
        }
        if self
            .ex
            .as_ref()
            .is_some_and(|e| e.job.deadline.is_some_and(|d| now >= d))
        {
            self.fail(ctx, Error::Timeout, false, now);
        }
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.fail(ctx, Error::Closed, false, now);
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.input.is_empty() && !self.finished {
            let _ = self.conn.handle_input(now, &mut self.input);
            self.events(ctx, now);
        }
        self.flush();
    }

    fn retry_pending(&mut self, _ctx: &mut WorkerCtx, _now: Instant) -> bool {
        true
    }

    fn take_mail(ctx: &mut WorkerCtx, shared: &Shared, _into: &mut Vec<(usize, Mail)>) {
        let rx = &shared.inbox[ctx.index % shared.inbox.len()];
        if rx.is_empty() {
            return;
        }
        let now = ctx.clock.now();
        let mut w = shared.worker(ctx.index);
        while let Ok(job) = rx.try_recv() {
            w.dispatch(ctx, shared, job, now);
        }
    }

    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        match mail {
            Mail::Start { gen, job, lease } => {
                let usable = gen == self.gen
                    && !self.finished
                    && !self.eof
                    && self.ex.is_none()
                    && self.lease.is_none()
                    && self.conn.is_reusable();
                if usable {
                    self.start(ctx, job, lease, now);
                } else {
                    let sh = &*self.shared;
                    let mut w = sh.worker(self.worker);
                    let _ = w.pool.checkin(lease, false, now);
                    w.dispatch(ctx, sh, job, now);
                }
            }
            Mail::Close { gen } => {
                if gen == self.gen && self.ex.is_none() {
                    self.conn.close();
                    self.finished = true;
                    self.alive.store(false, Relaxed);
                }
            }
        }
    }

    fn drop_mail(ctx: &mut WorkerCtx, shared: &Shared, mail: Mail) {
        if let Mail::Start { job, lease, .. } = mail {
            let now = ctx.clock.now();
            let mut w = shared.worker(ctx.index);
            let _ = w.pool.checkin(lease, false, now);
            w.dispatch(ctx, shared, job, now);
        }
    }

    fn tick(ctx: &mut WorkerCtx, shared: &Shared, now: Instant) -> Option<Instant> {
        Some(shared.worker(ctx.index).tick(ctx, shared, now))
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        let now = ctx.clock.now();
        self.alive.store(false, Relaxed);
        if let Some((_, slot)) = self.connecting.take() {
            let sh = self.shared.clone();
            let mut w = sh.worker(self.worker);
            w.connect_failed(ctx, &sh, slot, Error::Closed, now);
        }
        if self.ex.is_some() || self.lease.is_some() {
            self.fail(ctx, Error::Closed, false, now);
        }
    }
}
