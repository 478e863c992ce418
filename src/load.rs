//! The load loop behind `ferry bench`, shared by every protocol: `pipeline` requests kept in
//! flight per connection, latency per request into an HDR histogram (µs, 3 significant
//! digits) merged across threads. A duration run stops sending at the deadline and counts only
//! completed requests (like wrk); a count run (`-n`) hands out requests from a shared budget
//! and gives back the ones a dead connection lost.
//!
//! The connections run on Ferry's own I/O workers (`ferry_client::workers`: io_uring or epoll,
//! as `FERRY_DRIVER` or auto-selection picks), one outbound session per connection.
//!
//! A protocol plugs in as a [`LoadProto`]: a client state machine plus the one request it
//! repeats.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IsTerminal};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_client::workers::WorkerOptions;
use ferry_driver::{ConnInfo, OutQueue, Session, WorkerCtx};
use hdrhistogram::Histogram;

/// What a run measured.
pub struct BenchResult {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

/// What a response did, as far as the load loop cares.
pub enum Outcome {
    /// A request completed (key: stream id for multiplexed protocols, 0 for FIFO ones);
    /// `failed` when the answer was an error (HTTP status ≥ 400, a RESP error reply).
    Done { key: u64, failed: bool },
    /// The connection failed.
    Failed,
    /// The server is closing the connection gracefully (HTTP/2 GOAWAY NO_ERROR, e.g. nginx's
    /// `http2_max_requests`): send nothing more on it, reconnect once it closed.
    Draining,
    /// The server refused a request before processing it (REFUSED_STREAM): retry it.
    Refused(u64),
}

/// One connection's client state machine, as the load loop drives it.
pub trait LoadProto {
    /// Whether another request may be queued now.
    fn can_send(&self) -> bool;
    /// Queue the request at `now`; returns its key (see [`Outcome::Done`]), `None` if
    /// refused.
    fn send(&mut self, now: ferry_proto::Instant) -> Option<u64>;
    /// Bytes to write.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// Bytes read; `false` when the input broke the connection.
    fn handle_input(&mut self, now: ferry_proto::Instant, input: &mut BytesMut) -> bool;
    /// The server closed its side.
    fn handle_eof(&mut self, now: ferry_proto::Instant);
    /// Whether the connection is over.
    fn is_closed(&self) -> bool;
    /// The next outcome: `Some(None)` for an event the loop does not count.
    fn poll_outcome(&mut self) -> Option<Option<Outcome>>;
}

/// Where and how hard to push.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub pipeline: usize,
    /// A progress line per second on stderr (only when it is a terminal).
    pub progress: bool,
}

/// The run's state, shared by the sessions of every worker.
struct Shared<P> {
    plan: LoadPlan,
    /// Requests that may still be started (count mode).
    budget: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    make: Box<dyn Fn(ferry_proto::Instant) -> P + Send + Sync>,
    /// Connections per worker.
    per_worker: Vec<usize>,
    /// Whether each worker opened its connections.
    started: Vec<AtomicBool>,
    /// Why the run cannot go on (the first connect failed).
    fatal: Mutex<Option<String>>,
    /// Counts of closed connections.
    tally: Mutex<Option<Tally>>,
    connected_once: AtomicBool,
    start: Instant,
}

impl<P> Shared<P> {
    fn new(
        plan: LoadPlan,
        threads: usize,
        make: Box<dyn Fn(ferry_proto::Instant) -> P + Send + Sync>,
    ) -> Result<Shared<P>, String> {
        let per_worker = (0..threads)
            .map(|t| plan.connections / threads + usize::from(t < plan.connections % threads))
            .collect();
        Ok(Shared {
            budget: AtomicU64::new(plan.requests.unwrap_or(u64::MAX)),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            plan,
            make,
            per_worker,
            started: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            fatal: Mutex::new(None),
            tally: Mutex::new(Some(Tally::new()?)),
            connected_once: AtomicBool::new(false),
            start: Instant::now(),
        })
    }

    fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A connect failed: fatal before any connection worked (nothing listens there).
    fn fail_connect(&self, why: String) {
        if !self.connected_once.load(Ordering::Relaxed) {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!("cannot connect to {}: {why}", self.plan.addr));
            }
        }
    }

    fn tally_error(&self) {
        if let Some(t) = self
            .tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            t.errors += 1;
        }
    }

    fn limited(&self) -> bool {
        self.plan.requests.is_some()
    }

    /// Take one request from the budget: always granted in a duration run, never after stop.
    fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        !self.limited()
            || self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok()
    }

    /// Give back `n` requests that were taken but never completed.
    fn give_back(&self, n: u64) {
        if self.limited() {
            self.budget.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn all_taken(&self) -> bool {
        self.limited() && self.budget.load(Ordering::Relaxed) == 0
    }
}

/// Our clock for the client state machines: time since the run started.
pub fn now(clock: Instant) -> ferry_proto::Instant {
    ferry_proto::Instant::from_nanos(clock.elapsed().as_nanos() as u64)
}

/// Run `plan` with a connection state machine from `make` (called with the current time for
/// every new connection, including reconnects) on Ferry's own I/O workers
/// (`ferry_client::workers`: io_uring or epoll as `FERRY_DRIVER` or auto-selection picks),
/// `plan.threads` of them, one outbound session per connection.
pub fn run<P, F>(plan: LoadPlan, make: F) -> Result<BenchResult, String>
where
    P: LoadProto + Send + 'static,
    F: Fn(ferry_proto::Instant) -> P + Send + Sync + 'static,
{
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let shared = Arc::new(Shared::new(plan, threads, Box::new(make))?);
    let mut opts = WorkerOptions::default();
    opts.workers = threads;
    opts.read_chunk = 64 * 1024;
    opts.drain_timeout = Duration::from_secs(2);
    let workers = ferry_client::workers::start::<LoadConn<P>>(&opts, shared.clone())
        .map_err(|e| format!("cannot start the load workers: {e}"))?;
    for i in 0..workers.len() {
        workers.wake(i);
    }
    let start = shared.start;
    let tty = shared.plan.progress && io::stderr().is_terminal();
    let deadline = start + shared.plan.duration;
    let mut last = (start, 0u64);
    loop {
        let t = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        let finished = match shared.plan.requests {
            Some(n) => done >= n,
            None => t >= deadline,
        };
        if finished || shared.fatal_error().is_some() {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        if tty && t.duration_since(last.0) >= Duration::from_secs(1) {
            let rate = (done - last.1) as f64 / t.duration_since(last.0).as_secs_f64();
            let secs = t.duration_since(start).as_secs_f64();
            eprint!("\r{secs:>5.1}s {done:>10} requests {rate:>12.0} req/s ");
            last = (t, done);
        }
        let left = deadline.saturating_duration_since(t);
        let nap = if shared.limited() || left.is_zero() {
            Duration::from_millis(5)
        } else {
            left
        };
        std::thread::sleep(nap.min(Duration::from_millis(20)));
    }
    let elapsed = start.elapsed();
    if tty {
        eprintln!();
    }
    if workers.join() > 0 {
        return Err("a load worker panicked".into());
    }
    if let Some(e) = shared.fatal_error() {
        return Err(e);
    }
    let t = shared
        .tally
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let t = match t {
        Some(t) => t,
        None => Tally::new()?,
    };
    Ok(BenchResult {
        requests: t.requests,
        errors: t.errors,
        bytes: t.bytes,
        elapsed,
        hist: t.hist,
    })
}

/// What sessions counted (merged into the run's total when a connection closes).
struct Tally {
    requests: u64,
    errors: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Tally, String> {
        Ok(Tally {
            requests: 0,
            errors: 0,
            bytes: 0,
            hist: Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
        })
    }
}

/// One load connection as a driver session: the protocol's state machine, its requests in
/// flight (key, start time) and its own counters.
struct LoadConn<P: LoadProto> {
    shared: Arc<Shared<P>>,
    conn: Option<P>,
    input: BytesMut,
    out: OutQueue,
    started: VecDeque<(u64, Instant)>,
    connect_deadline: Option<ferry_proto::Instant>,
    dead: bool,
    draining: bool,
    tally: Tally,
}

impl<P: LoadProto> LoadConn<P> {
    /// Feed the state machine's outcomes into the counters.
    fn outcomes(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let at = Instant::now();
        let t = &mut self.tally;
        while let Some(ev) = conn.poll_outcome() {
            match ev {
                Some(Outcome::Done { key, failed }) => {
                    t.errors += u64::from(failed);
                    let i = if key == 0 {
                        0
                    } else {
                        self.started
                            .iter()
                            .position(|(k, _)| *k == key)
                            .unwrap_or(0)
                    };
                    if let Some((_, sent)) = self.started.remove(i) {
                        let us = at.saturating_duration_since(sent).as_micros() as u64;
                        let _ = t.hist.record(us.max(1));
                        t.requests += 1;
                        self.shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Outcome::Failed) => {
                    // Requests a draining server refused are retried elsewhere.
                    t.errors += u64::from(!self.draining);
                    self.dead = true;
                }
                Some(Outcome::Draining) => self.draining = true,
                Some(Outcome::Refused(key)) => {
                    if let Some(i) = self.started.iter().position(|(k, _)| *k == key) {
                        self.started.remove(i);
                        self.shared.give_back(1);
                    }
                }
                None => {}
            }
        }
    }

    /// Top the pipeline up to `pipeline` requests in flight and queue their bytes.
    fn fill(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let s = &*self.shared;
        let depth = s.plan.pipeline.max(1);
        if !self.draining && !self.dead && self.started.len() < depth {
            let at = Instant::now();
            let stamp = ferry_proto::Instant::from_nanos(
                at.saturating_duration_since(s.start).as_nanos() as u64,
            );
            while conn.can_send() && self.started.len() < depth && s.take() {
                match conn.send(stamp) {
                    Some(key) => self.started.push_back((key, at)),
                    None => {
                        s.give_back(1);
                        break;
                    }
                }
            }
        }
        while let Some(b) = conn.poll_transmit() {
            self.out.push(b);
        }
    }
}

impl<P: LoadProto + Send + 'static> Session for LoadConn<P> {
    type Shared = Shared<P>;
    type Mail = ();

    fn open(
        _: &mut WorkerCtx,
        _: &Arc<Shared<P>>,
        _: ConnInfo,
        _: u32,
        _: ferry_proto::Instant,
    ) -> Option<Self> {
        None
    }

    fn open_outbound(
        _ctx: &mut WorkerCtx,
        shared: &Arc<Shared<P>>,
        _info: ConnInfo,
        _tag: u64,
        _gen: u32,
        now: ferry_proto::Instant,
    ) -> Option<Self> {
        Some(LoadConn {
            shared: shared.clone(),
            conn: None,
            input: BytesMut::with_capacity(16 * 1024),
            out: OutQueue::default(),
            started: VecDeque::new(),
            connect_deadline: Some(now + Duration::from_secs(5)),
            dead: false,
            draining: false,
            tally: Tally::new().ok()?,
        })
    }

    fn on_connected(&mut self, _ctx: &mut WorkerCtx, _now: ferry_proto::Instant) {
        self.connect_deadline = None;
        self.shared.connected_once.store(true, Ordering::Relaxed);
        let now = now(self.shared.start);
        self.conn = Some((self.shared.make)(now));
        self.fill();
    }

    fn connect_failed(&mut self, _ctx: &mut WorkerCtx, e: io::Error, _: ferry_proto::Instant) {
        self.shared.fail_connect(e.to_string());
        self.dead = true;
    }

    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }
    fn wants_read(&self, _: &WorkerCtx) -> bool {
        !self.dead
    }
    fn is_finished(&self) -> bool {
        self.dead || self.conn.as_ref().is_some_and(|c| c.is_closed())
    }
    fn saw_eof(&self) -> bool {
        self.dead
    }
    fn has_pending(&self) -> bool {
        false
    }
    fn poll_timeout(&self) -> Option<ferry_proto::Instant> {
        self.connect_deadline
    }
    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.fill_iov(iov)
    }
    fn written(&mut self, _: &WorkerCtx, n: usize) {
        self.out.written(n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.out.take_out(max, into)
    }
    fn sent(&mut self, _: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        self.out.sent(n, chunks)
    }
    fn on_read(&mut self, _: &WorkerCtx, n: usize) {
        self.tally.bytes += n as u64;
    }
    fn on_eof(&mut self, _: &mut WorkerCtx, _: ferry_proto::Instant) {
        if let Some(c) = self.conn.as_mut() {
            c.handle_eof(now(self.shared.start));
        }
        self.outcomes();
        self.dead = true;
    }
    fn on_timeout(&mut self, _: &mut WorkerCtx, t: ferry_proto::Instant) {
        if self.conn.is_none() && self.connect_deadline.is_some_and(|d| t >= d) {
            self.shared.fail_connect("connect timed out".into());
            self.dead = true;
        }
    }
    fn begin_shutdown(&mut self, _: &mut WorkerCtx, _: ferry_proto::Instant) {
        self.dead = true;
    }
    fn process(&mut self, _: &mut WorkerCtx, _: ferry_proto::Instant) {
        if self.dead {
            return;
        }
        if let Some(c) = self.conn.as_mut() {
            if !self.input.is_empty() && !c.handle_input(now(self.shared.start), &mut self.input) {
                self.dead = true;
            }
        }
        self.outcomes();
        self.fill();
    }
    fn retry_pending(&mut self, _: &mut WorkerCtx, _: ferry_proto::Instant) -> bool {
        true
    }
    fn take_mail(ctx: &mut WorkerCtx, shared: &Shared<P>, _: &mut Vec<(usize, ())>) {
        // The first loop turn of each worker opens its share of the connections.
        let i = ctx.index;
        if !shared.started[i].swap(true, Ordering::Relaxed) {
            for _ in 0..shared.per_worker[i] {
                ctx.connect(shared.plan.addr, 0);
            }
        }
    }
    fn apply_mail(&mut self, _: &mut WorkerCtx, _: (), _: ferry_proto::Instant) {}

    fn close(mut self, ctx: &mut WorkerCtx) {
        let s = self.shared.clone();
        // Requests in flight on a dead connection are lost: give them back.
        s.give_back(self.started.len() as u64);
        // (Not an error when the run is over: a duration run stops with requests in flight.)
        let over = s.stop.load(Ordering::Relaxed) || ctx.shutdown.is_triggered();
        if !self.started.is_empty() && !self.draining && !over {
            self.tally.errors += 1;
        }
        let connected = self.conn.is_some();
        if let Some(t) = s.tally.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            t.requests += self.tally.requests;
            t.errors += self.tally.errors;
            t.bytes += self.tally.bytes;
            let _ = t.hist.add(&self.tally.hist);
        }
        if !connected && !over {
            s.tally_error();
        }
        // Reconnect (the loss was counted as an error) unless the run is over.
        if !over && !s.all_taken() && s.fatal_error().is_none() {
            ctx.connect(s.plan.addr, 0);
        }
    }
}

/// The stable latency object of `--json`: `p50`, `p90`, `p99`, `p999`, `max` in µs.
fn latency_json(h: &Histogram<u64>) -> String {
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    format!(
        "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        if h.is_empty() { 0 } else { h.max() }
    )
}

/// One result as the stable `--json` object, with `extra` (`,"key":value…`) appended.
pub fn result_json(r: &BenchResult, extra: &str) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    format!(
        "{{\"requests\":{},\"errors\":{},\"duration_s\":{:.3},\"rps\":{:.1},\"bytes\":{},\"latency_us\":{}{extra}}}",
        r.requests,
        r.errors,
        secs,
        r.requests as f64 / secs,
        r.bytes,
        latency_json(&r.hist)
    )
}
