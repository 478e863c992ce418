//! The load loop behind `ferry bench`, shared by every protocol: threads that each own a share
//! of the connections, an edge-triggered mio loop per thread, `pipeline` requests kept in
//! flight per connection, latency per request into an HDR histogram (µs, 3 significant
//! digits) merged across threads. A duration run stops sending at the deadline and counts only
//! completed requests (like wrk); a count run (`-n`) hands out requests from a shared budget
//! and gives back the ones a dead connection lost.
//!
//! A protocol plugs in as a [`LoadProto`]: a client state machine plus the one request it
//! repeats. Per connection and wake-up the loop reads until a short read (no extra `EAGAIN`
//! round trip), hands the bytes to the state machine, counts the completed requests, refills
//! the pipeline and writes everything queued in one vectored write.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

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
    /// Queue the request; returns its key (see [`Outcome::Done`]), `None` if refused.
    fn send(&mut self) -> Option<u64>;
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

struct Shared {
    plan: LoadPlan,
    /// Requests that may still be started (count mode).
    budget: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
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
/// every new connection, including reconnects).
pub fn run<P, F>(plan: LoadPlan, make: F) -> Result<BenchResult, String>
where
    P: LoadProto,
    F: Fn(ferry_proto::Instant) -> P + Send + Sync + 'static,
{
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let shared = Arc::new(Shared {
        budget: AtomicU64::new(plan.requests.unwrap_or(u64::MAX)),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        plan,
    });
    let make = Arc::new(make);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let c = &shared.plan.connections;
        let n = c / threads + usize::from(t < c % threads);
        let (s, make) = (shared.clone(), make.clone());
        handles.push(std::thread::spawn(move || worker(&s, n, start, &*make)));
    }
    let tty = shared.plan.progress && io::stderr().is_terminal();
    let deadline = start + shared.plan.duration;
    let mut last = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        let t = Instant::now();
        if !shared.limited() && t >= deadline {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if tty && t.duration_since(last.0) >= Duration::from_secs(1) {
            let done = shared.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / t.duration_since(last.0).as_secs_f64();
            let secs = t.duration_since(start).as_secs_f64();
            eprint!("\r{secs:>5.1}s {done:>10} requests {rate:>12.0} req/s ");
            last = (t, done);
        }
        let left = deadline.saturating_duration_since(t);
        let nap = if shared.limited() || left.is_zero() {
            Duration::from_millis(20)
        } else {
            left
        };
        std::thread::sleep(nap.min(Duration::from_millis(20)));
    }
    if tty {
        eprintln!();
    }
    let elapsed = start.elapsed();
    let mut total = BenchResult {
        requests: 0,
        errors: 0,
        bytes: 0,
        elapsed,
        hist: Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "a bench thread panicked".to_string())??;
        total.requests += r.requests;
        total.errors += r.errors;
        total.bytes += r.bytes;
        total.hist.add(&r.hist).map_err(|e| e.to_string())?;
    }
    Ok(total)
}

struct Client<P> {
    stream: TcpStream,
    conn: P,
    input: BytesMut,
    out: VecDeque<Bytes>,
    started: VecDeque<(u64, Instant)>,
    readable: bool,
    /// The peer closed or the socket failed: read until 0 or an error, not just a short read.
    hup: bool,
    writable: bool,
    dead: bool,
    draining: bool,
}

fn connect<P>(addr: SocketAddr, poll: &Poll, token: usize, conn: P) -> io::Result<Client<P>> {
    let std = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    std.set_nodelay(true)?;
    std.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(std);
    poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(Client {
        stream,
        conn,
        input: BytesMut::with_capacity(16 * 1024),
        out: VecDeque::new(),
        started: VecDeque::new(),
        readable: true,
        hup: false,
        writable: true,
        dead: false,
        draining: false,
    })
}

/// What one thread counted.
struct Tally {
    requests: u64,
    errors: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

fn worker<P: LoadProto>(
    s: &Shared,
    n: usize,
    start: Instant,
    make: &dyn Fn(ferry_proto::Instant) -> P,
) -> Result<BenchResult, String> {
    let addr = s.plan.addr;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut t = Tally {
        requests: 0,
        errors: 0,
        bytes: 0,
        hist: Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    };
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        match connect(addr, &poll, i, make(now(start))) {
            Ok(c) => clients.push(c),
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        if !first {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            for ev in events.iter() {
                if let Some(c) = clients.get_mut(ev.token().0) {
                    c.hup |= ev.is_read_closed() || ev.is_error();
                    c.readable |= ev.is_readable() || c.hup;
                    c.writable |= ev.is_writable();
                }
            }
        }
        first = false;
        let stopping = s.stop.load(Ordering::Relaxed);
        let mut active = 0;
        for (i, c) in clients.iter_mut().enumerate() {
            if c.dead {
                // Reconnect (the loss was counted as an error) unless the run is over.
                if stopping || s.all_taken() {
                    continue;
                }
                match connect(addr, &poll, i, make(now(start))) {
                    Ok(nc) => *c = nc,
                    Err(_) => {
                        t.errors += 1;
                        continue;
                    }
                }
            }
            if c.readable {
                read(s, c, &mut buf, start, &mut t);
            }
            if !c.dead {
                fill(s, c);
                write(c);
            }
            if c.conn.is_closed() {
                c.dead = true;
            }
            if c.dead {
                // Requests in flight on a dead connection are lost: give them back.
                s.give_back(c.started.len() as u64);
                if !c.started.is_empty() && !c.draining {
                    t.errors += 1;
                }
                c.started.clear();
                let _ = poll.registry().deregister(&mut c.stream);
            }
            active += usize::from(!c.started.is_empty());
        }
        if stopping || (s.all_taken() && active == 0) {
            break;
        }
    }
    Ok(BenchResult {
        requests: t.requests,
        errors: t.errors,
        bytes: t.bytes,
        elapsed: start.elapsed(),
        hist: t.hist,
    })
}

/// Read until a short read, feed the state machine, count what completed.
fn read<P: LoadProto>(
    s: &Shared,
    c: &mut Client<P>,
    buf: &mut [u8],
    start: Instant,
    t: &mut Tally,
) {
    while c.readable && !c.dead {
        match c.stream.read(buf) {
            Ok(0) => {
                c.conn.handle_eof(now(start));
                c.dead = true;
            }
            Ok(k) => {
                t.bytes += k as u64;
                // Edge-triggered: a short read drained the socket, and new bytes bring a new
                // edge, so there is no need for the extra read that returns EAGAIN.
                c.readable = k == buf.len() || c.hup;
                c.input.extend_from_slice(&buf[..k]);
                if !c.conn.handle_input(now(start), &mut c.input) {
                    c.dead = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => c.dead = true,
        }
        let at = Instant::now();
        while let Some(ev) = c.conn.poll_outcome() {
            match ev {
                Some(Outcome::Done { key, failed }) => {
                    t.errors += u64::from(failed);
                    let i = if key == 0 {
                        0
                    } else {
                        c.started.iter().position(|(k, _)| *k == key).unwrap_or(0)
                    };
                    if let Some((_, sent)) = c.started.remove(i) {
                        let us = at.saturating_duration_since(sent).as_micros() as u64;
                        let _ = t.hist.record(us.max(1));
                        t.requests += 1;
                        s.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Outcome::Failed) => {
                    // Requests a draining server refused are retried elsewhere.
                    t.errors += u64::from(!c.draining);
                    c.dead = true;
                }
                Some(Outcome::Draining) => c.draining = true,
                Some(Outcome::Refused(key)) => {
                    if let Some(i) = c.started.iter().position(|(k, _)| *k == key) {
                        c.started.remove(i);
                        s.give_back(1);
                    }
                }
                None => {}
            }
        }
    }
}

/// Top the pipeline up to `pipeline` requests in flight.
fn fill<P: LoadProto>(s: &Shared, c: &mut Client<P>) {
    let depth = s.plan.pipeline.max(1);
    if c.draining || c.started.len() >= depth {
        return;
    }
    let at = Instant::now();
    while c.conn.can_send() && c.started.len() < depth && s.take() {
        match c.conn.send() {
            Some(key) => c.started.push_back((key, at)),
            None => {
                s.give_back(1);
                break;
            }
        }
    }
}

/// Write everything queued, vectored, until done or `EAGAIN`.
fn write<P: LoadProto>(c: &mut Client<P>) {
    while let Some(b) = c.conn.poll_transmit() {
        c.out.push_back(b);
    }
    while c.writable && !c.out.is_empty() {
        let mut iov = [IoSlice::new(&[]); 32];
        let k = c.out.len().min(32);
        for (slot, b) in iov.iter_mut().zip(c.out.iter()) {
            *slot = IoSlice::new(b);
        }
        match c.stream.write_vectored(&iov[..k]) {
            Ok(mut w) => {
                while w > 0 {
                    let Some(f) = c.out.front_mut() else { break };
                    if f.len() <= w {
                        w -= f.len();
                        c.out.pop_front();
                    } else {
                        let _ = f.split_to(w);
                        w = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.dead = true;
                break;
            }
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
